"""A transformer prior over code maps: a GPT-style decoder that reads the map in raster order.

Written in the shape of nanoGPT's ``model.py`` (Karpathy): pre-norm blocks of causal multi-head
self-attention (``scaled_dot_product_attention``) and an MLP, learned positional embeddings, and
output weights tied to the token embedding (Press & Wolf 2017). Every position sees every earlier
position, so the top map of a two-level VQ-VAE (VQ-VAE-2, Razavi et al. 2019) is drawn with
global context, which a PixelCNN's local window cannot give.

The sequence for a (h, w) map is ``[start, c_0, ..., c_{T-2}]`` with T = h*w; the logits at
position t predict code c_t. The start token is the slice index's embedding (slice-conditioned)
or a learned vector. ``forward(codes (B, h, w), condition (B,) | None) -> logits (B, K, h, w)``,
the same contract as the PixelCNN priors, so training, evaluation and scoring treat both alike.
:meth:`TransformerPrior.step` runs new positions against a key/value cache (used by the sampler).

A context map of the same size (the stack prior: the previous slice's top map) enters in one of two
ways (``config.context_mode``): ``aligned`` adds, at each position, a 3x3 convolution of the previous
map's code embeddings around that place; ``prefix`` puts the previous map's T codes (with their own
positions) before the start token, so the sequence is 2T long and every position attends to the
whole previous map. Either way position t of the current map sees only codes before t. Aligned, the
context may hold M maps (B, M, h, w) (``config.context_slices``: slices k-1, k-2, or the stack's first),
each read through its own code embeddings, summed before the convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from brainvq.models.settings import PriorConfig


@dataclass
class KVCache:
    """Keys and values of the positions fed so far, per block: buffers (B, heads, T, head_dim) for
    the whole sequence, allocated on first use and written in place (growing them with ``cat`` at
    every step copied the whole cache each time, most of the top map's sampling time), of which the
    first ``length`` positions are filled."""

    keys: list[torch.Tensor | None] = field(default_factory=list)
    values: list[torch.Tensor | None] = field(default_factory=list)
    length: int = 0
    capacity: int = 0
    context: torch.Tensor | None = None  # the context map's features (B, T, C), computed at the first step

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' ``k``, ``v`` (B, heads, new, head_dim) of block ``layer`` after
        the ``length`` cached ones; return the keys and values of every position so far."""
        start, end = self.length, self.length + k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            shape = (k.shape[0], k.shape[1], max(self.capacity, end), k.shape[3])
            keys, values = k.new_empty(shape), v.new_empty(shape)
            self.keys[layer], self.values[layer] = keys, values
        keys[:, :, start:end], values[:, :, start:end] = k, v
        return keys[:, :, :end], values[:, :, :end]


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where position t attends to positions <= t."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_channels, 3 * config.hidden_channels)
        self.proj = nn.Linear(config.hidden_channels, config.hidden_channels)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        heads = (batch, length, self.num_heads, width // self.num_heads)
        q, k, v = (t.view(heads).transpose(1, 2) for t in (q, k, v))  # (B, T, C) -> (B, heads, T, C/heads)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        dropout = self.dropout if self.training else 0.0
        if k.shape[2] == length:  # no cached positions: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif length == 1:  # one new position sees every position so far
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            mask = causal_mask(length, k.shape[2], x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(batch, length, width)  # (B, heads, T, C/heads) -> (B, T, C)
        return self.resid_dropout(self.proj(y))


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """(queries, keys) bool mask: the last ``queries`` positions of ``keys`` attend to <= themselves."""
    offset = keys - queries
    rows = torch.arange(queries, device=device)[:, None] + offset
    return torch.arange(keys, device=device)[None, :] <= rows


class MLP(nn.Module):
    """Linear (4x wider), GELU, linear, dropout."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.hidden_channels, 4 * config.hidden_channels)
        self.proj = nn.Linear(4 * config.hidden_channels, config.hidden_channels)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_channels)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_channels)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class TransformerPrior(nn.Module):
    """GPT-style prior over a (code_height, code_width) map; see the module docstring."""

    def __init__(self, config: PriorConfig, num_embeddings: int) -> None:
        super().__init__()
        if config.code_height is None or config.code_width is None:
            raise ValueError(
                "the transformer prior needs prior.code_height and prior.code_width (set by train-prior)"
            )
        if config.context_num_embeddings is not None and config.context_factor != 1:
            raise ValueError("the transformer prior reads a context map of its own size only (context_factor 1)")
        if config.context_mode not in ("aligned", "prefix"):
            raise ValueError(f"context_mode must be 'aligned' or 'prefix', got {config.context_mode!r}")
        self.context_maps = len(config.context_slices)
        if self.context_maps < 1 or (self.context_maps > 1 and config.context_mode != "aligned"):
            raise ValueError(
                f"context_slices: one, or more with context_mode 'aligned'; got {config.context_slices}"
            )
        self.config, self.num_embeddings = config, num_embeddings
        width, length = config.hidden_channels, config.code_height * config.code_width
        self.length = length
        self.prefix = config.context_num_embeddings is not None and config.context_mode == "prefix"
        self.token = nn.Embedding(num_embeddings, width)
        self.position = nn.Embedding(2 * length if self.prefix else length, width)
        if config.context_num_embeddings is not None:
            self.context_token = nn.Embedding(self.context_maps * config.context_num_embeddings, width)
            if not self.prefix:
                self.context_mix = nn.Conv2d(width, width, 3, padding=1)
        self.start = nn.Embedding(config.num_slices if config.condition_on_slice else 1, width)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_embeddings, bias=False)
        self.head.weight = self.token.weight  # weight tying
        self.apply(_init_weights)

    def forward(
        self, codes: torch.Tensor, condition: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch, height, width = codes.shape
        flat = codes.reshape(batch, height * width)  # (B, h, w) -> (B, T)
        x = torch.cat([self._start(condition, batch), self.token(flat[:, :-1])], 1)  # (B, T, C)
        x = x + self.position.weight[-self.length :]
        features = self.context_features(context, batch)
        if self.prefix and features is not None:
            x = torch.cat([features, x], 1)  # (B, 2T, C): the previous map, then this one
        elif features is not None:
            x = x + features
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x[:, -self.length :]))  # (B, T, K) this map's positions
        return logits.transpose(1, 2).reshape(batch, -1, height, width)  # (B, T, K) -> (B, K, h, w)

    def context_features(self, context: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        """The context map (B, h, w), or maps (B, M, h, w), as features (B, T, C): aligned with the
        positions, or the prefix."""
        if self.config.context_num_embeddings is None:
            if context is not None:
                raise ValueError("this transformer prior takes no context map")
            return None
        if context is None:
            raise ValueError("this transformer prior reads a context map (the previous slice's): pass context")
        maps = context.reshape(batch, self.context_maps, -1)  # (B, [M,] h, w) -> (B, M, T)
        offsets = torch.arange(self.context_maps, device=context.device) * self.config.context_num_embeddings
        embedded = self.context_token(maps + offsets[:, None]).sum(1)  # (B, M, T) -> (B, M, T, C) -> (B, T, C)
        if self.prefix:
            return embedded + self.position.weight[: self.length]
        height, width = context.shape[-2:]
        grid = embedded.transpose(1, 2).reshape(batch, -1, height, width)  # (B, T, C) -> (B, C, h, w)
        return self.context_mix(grid).flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, T, C)

    def _start(self, condition: torch.Tensor | None, batch: int) -> torch.Tensor:
        if self.config.condition_on_slice:
            if condition is None:
                raise ValueError("this prior is conditioned on the slice index: pass condition=(B,) slice indices")
            return self.start(condition)[:, None]  # (B, C) -> (B, 1, C)
        return self.start.weight[None].expand(batch, 1, -1)  # (1, C) -> (B, 1, C)

    def new_cache(self) -> KVCache:
        """An empty key/value cache for :meth:`step`."""
        length = int(self.position.num_embeddings)
        return KVCache([None] * len(self.blocks), [None] * len(self.blocks), 0, length)

    def step(
        self,
        flat_codes: torch.Tensor,
        upto: int,
        cache: KVCache,
        condition: torch.Tensor | None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Feed positions ``cache.length..upto`` of this map (their inputs: the start token or the codes
        before them in ``flat_codes`` (B, T)) and return the logits (B, K) at position ``upto``. A
        context map (B, h, w) must be the same at every step of one cache."""
        batch = flat_codes.shape[0]
        offset = self.length if self.prefix else 0  # cached positions before this map's first
        if cache.length == 0:
            cache.context = self.context_features(context, batch)
            if self.prefix:  # the previous map goes into the cache first
                x = cache.context
                for layer, block in enumerate(self.blocks):
                    x = block(x, cache, layer)
                cache.length = offset
        first = cache.length - offset
        x = self.step_inputs(flat_codes, first, upto, condition, cache.context)  # (B, new, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        cache.length = offset + upto + 1
        return self.head(self.ln_f(x[:, -1]))  # (B, C) -> (B, K)

    def step_inputs(
        self,
        flat_codes: torch.Tensor,
        first: int,
        upto: int,
        condition: torch.Tensor | None,
        context: torch.Tensor | None,
    ) -> torch.Tensor:
        """The first block's input (B, upto - first + 1, C) at this map's positions ``first..upto``: the
        start token or the code before each, its position and, when aligned, the context map's features
        (B, T, C) there."""
        inputs = [] if first > 0 else [self._start(condition, flat_codes.shape[0])]
        if upto >= max(first, 1):
            inputs.append(self.token(flat_codes[:, max(first, 1) - 1 : upto]))
        offset = self.length if self.prefix else 0
        x = torch.cat(inputs, 1) + self.position.weight[offset + first : offset + upto + 1]  # (B, new, C)
        if context is not None and not self.prefix:
            x = x + context[:, first : upto + 1]
        return x


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
