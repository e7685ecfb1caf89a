"""Two transformer priors stepped as one: a guided draw (:class:`brainvq.sampling.maps.Guide`) needs, at
every position, the logits of the prior and of its guide (the stack prior and the independent top prior
of a stack's top maps). Stepped one after the other, each of their small matrix products reads its
weights for a batch of a few maps, and the per-call cost dominates; stacked side by side (weights
(2, C_in, C_out), one ``baddbmm`` per layer for both) the two take about the time of one.

:class:`PairedKVSampler` gives what two :class:`brainvq.sampling.fast.KVSampler` would, position by
position (to float rounding): a key/value cache for both, the first prior's context map as its own step
does. :func:`pairable` says when two priors can be stacked: the same shapes, and no prefix context;
:func:`paired_sampler` makes one where they can.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from brainvq.models.priors import Prior
from brainvq.models.transformer import Block, KVCache, TransformerPrior, causal_mask


class Linear(NamedTuple):
    """Two linear layers' weights side by side: (2, C_in, C_out) and bias (2, 1, C_out)."""

    weight: torch.Tensor
    bias: torch.Tensor


class Norm(NamedTuple):
    """Two layer norms' weights side by side, (2, 1, 1, C) each, and their epsilon."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


class PairedBlock(NamedTuple):
    ln_1: Norm
    qkv: Linear
    proj: Linear
    ln_2: Norm
    fc: Linear
    mlp_proj: Linear


def pairable(first: Prior, second: Prior) -> bool:
    """Whether :class:`PairedKVSampler` can step ``first`` and ``second`` together: two transformer priors
    of the same map, width, heads, depth and codebook; only ``first`` may read a context map, aligned."""
    if not (isinstance(first, TransformerPrior) and isinstance(second, TransformerPrior)):
        return False
    a, b = first.config, second.config
    same = (a.hidden_channels, a.num_heads, a.num_layers, first.length, first.num_embeddings) == (
        b.hidden_channels, b.num_heads, b.num_layers, second.length, second.num_embeddings)  # fmt: skip
    return same and not first.prefix and b.context_num_embeddings is None


def paired_sampler(
    priors: tuple[Prior, Prior],
    codes: torch.Tensor,
    conditions: tuple[torch.Tensor | None, torch.Tensor | None],
    context: torch.Tensor | None,
) -> PairedKVSampler | None:
    """A :class:`PairedKVSampler` for ``priors`` if they are :func:`pairable`, else None."""
    first, second = priors
    if isinstance(first, TransformerPrior) and isinstance(second, TransformerPrior) and pairable(first, second):
        return PairedKVSampler((first, second), codes, conditions, context)
    return None


def _linear(first: nn.Linear, second: nn.Linear) -> Linear:
    weight = torch.stack([first.weight.t(), second.weight.t()]).contiguous()  # 2 x (out, in) -> (2, in, out)
    return Linear(weight, torch.stack([first.bias, second.bias])[:, None])  # 2 x (C_out,) -> (2, 1, C_out)


def _norm(first: nn.LayerNorm, second: nn.LayerNorm) -> Norm:
    weight = torch.stack([first.weight, second.weight])[:, None, None]  # 2 x (C,) -> (2, 1, 1, C)
    return Norm(weight, torch.stack([first.bias, second.bias])[:, None, None], float(first.eps))


def _block(first: nn.Module, second: nn.Module) -> PairedBlock:
    assert isinstance(first, Block) and isinstance(second, Block)
    return PairedBlock(
        _norm(first.ln_1, second.ln_1),
        _linear(first.attn.qkv, second.attn.qkv),
        _linear(first.attn.proj, second.attn.proj),
        _norm(first.ln_2, second.ln_2),
        _linear(first.mlp.fc, second.mlp.fc),
        _linear(first.mlp.proj, second.mlp.proj),
    )


def apply_linear(x: torch.Tensor, layer: Linear) -> torch.Tensor:
    """(2, B, L, C_in) -> (2, B, L, C_out), each half through its own weights."""
    pair, batch, length, width = x.shape
    out = torch.baddbmm(layer.bias, x.reshape(pair, batch * length, width), layer.weight)  # (2, B*L, C_out)
    return out.view(pair, batch, length, -1)  # (2, B*L, C_out) -> (2, B, L, C_out)


def apply_norm(x: torch.Tensor, norm: Norm) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=norm.eps) * norm.weight + norm.bias


class PairedKVSampler:
    """The logits of two priors (:func:`pairable`) at each position, with the ``logits(i, j)`` /
    ``finish_row(i)`` interface of :class:`brainvq.sampling.fast.KVSampler`; ``logits`` returns both,
    (B, K) each. ``codes`` (B, h, w) is the live map both read; ``conditions`` their slice indices;
    ``context`` the first prior's context map."""

    def __init__(
        self,
        priors: tuple[TransformerPrior, TransformerPrior],
        codes: torch.Tensor,
        conditions: tuple[torch.Tensor | None, torch.Tensor | None],
        context: torch.Tensor | None,
    ) -> None:
        first, second = priors
        self.priors, self.codes, self.conditions = priors, codes, conditions
        self.width, self.num_heads = codes.shape[2], first.config.num_heads
        self.blocks = [_block(a, b) for a, b in zip(first.blocks, second.blocks, strict=True)]
        self.final = _norm(first.ln_f, second.ln_f)
        self.head = torch.stack([first.head.weight.t(), second.head.weight.t()])  # 2 x (K, C) -> (2, C, K)
        self.context = first.context_features(context, codes.shape[0])  # (B, T, C) or None
        self.cache = KVCache([None] * len(self.blocks), [None] * len(self.blocks), 0, first.length)

    def logits(self, i: int, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each prior's logits (B, K) at (i, j); every position before it must hold its final code."""
        flat = self.codes.view(self.codes.shape[0], -1)  # (B, h, w) -> (B, T), a view of the live map
        upto, first = i * self.width + j, self.cache.length
        x = torch.stack([
            prior.step_inputs(flat, first, upto, condition, context)
            for prior, condition, context in zip(self.priors, self.conditions, (self.context, None), strict=True)
        ])  # fmt: skip  # 2 x (B, new, C) -> (2, B, new, C)
        for layer, block in enumerate(self.blocks):
            x = self._block(x, block, layer)
        self.cache.length = upto + 1
        last = apply_norm(x[:, :, -1:], self.final)[:, :, 0]  # (2, B, 1, C) -> (2, B, C)
        logits = torch.bmm(last, self.head)  # (2, B, K)
        return logits[0], logits[1]

    def _block(self, x: torch.Tensor, block: PairedBlock, layer: int) -> torch.Tensor:
        x = x + self._attention(apply_norm(x, block.ln_1), block, layer)
        return x + apply_linear(F.gelu(apply_linear(apply_norm(x, block.ln_2), block.fc)), block.mlp_proj)

    def _attention(self, x: torch.Tensor, block: PairedBlock, layer: int) -> torch.Tensor:
        pair, batch, length, width = x.shape
        q, k, v = apply_linear(x, block.qkv).split(width, dim=3)
        heads = (pair * batch, length, self.num_heads, width // self.num_heads)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))  # (2, B, L, C) -> (2B, heads, L, C/heads)
        k, v = self.cache.extend(layer, k, v)
        mask = None if length == 1 else causal_mask(length, k.shape[2], x.device)  # one new position sees all
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(pair, batch, length, width)  # (2B, heads, L, C/heads) -> (2, B, L, C)
        return apply_linear(y, block.proj)

    def finish_row(self, i: int) -> None:
        """Nothing to do: keys and values are cached as positions are fed."""
