"""PixelCNN priors over code maps: the seed PixelCNN and the Gated PixelCNN.

Both are written as ``embed`` followed by a list of ``stages``. Every stage is a 'same'-padded,
causal function of its input whose output at (r, c) depends only on inputs in rows <= r within
Chebyshev distance ``stage.radius``. Stages take a state (a tensor, or a (vertical, horizontal)
pair for the gated model) and their ``extra``: what the stage adds to its pre-activations that
does not depend on the codes (the slice-index bias and the projected top-map context), computed
once per map by ``stage.extra(condition, context)``. This structure is what lets
:mod:`brainvq.sampling` compute the next position's logits on a small window (exactly), reading a
window of each stage's ``extra`` instead of recomputing it at every position.

References: van den Oord et al. 2016, "Pixel Recurrent Neural Networks" (masks A and B);
van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders" (gated
vertical/horizontal stacks without a blind spot, conditional biases; the location-dependent
conditioning ``V * s`` of its eq. 5 is how the bottom prior of a two-level run reads the top map).

In a two-level run (VQ-VAE-2, Razavi et al. 2019) the bottom prior is conditioned on the top code
map: :class:`ContextNet` embeds the top codes and brings them to the bottom grid, and every stage
adds a 1x1 projection of that context to its pre-activations. The context is known in full before
sampling starts, so causality (and the sampler's row cache) are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from brainvq.models.layers import ConditionalBias, MaskedConv2d
from brainvq.models.settings import PriorConfig

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


Extra = torch.Tensor | float  # (B, C, 1, 1) or (B, C, h, w) added to a stage's pre-activations, or 0


def _extra(
    bias: ConditionalBias | None,
    condition: torch.Tensor | None,
    projection: nn.Conv2d | None,
    context: torch.Tensor | None,
) -> Extra:
    """The slice-index bias (B, C, 1, 1) plus the projected context map (B, C, h, w); 0 for a stage
    conditioned on neither."""
    total: Extra = 0.0
    if bias is not None:
        if condition is None:
            raise ValueError("this prior is conditioned on the slice index: pass condition=(B,) slice indices")
        total = bias(condition)
    if projection is not None:
        if context is None:
            raise ValueError("this prior is conditioned on a top code map: pass context=(B, h_top, w_top) codes")
        total = total + projection(context.to(projection.weight.dtype))
    return total


def _add(h: torch.Tensor, extra: Extra) -> torch.Tensor:
    """``h + extra``, keeping ``h``'s dtype (bf16 activations stay bf16 under autocast)."""
    return h + (extra.to(h.dtype) if isinstance(extra, torch.Tensor) else extra)


def _context_projection(context_channels: int | None, channels: int) -> nn.Conv2d | None:
    return nn.Conv2d(context_channels, channels, kernel_size=1) if context_channels else None


class ContextNet(nn.Module):
    """Top codes (B, h/f, w/f) -> context features (B, context_channels, h, w) on the bottom grid:
    an embedding, a 3x3 convolution, ``log2(f)`` stride-2 transposed convolutions, a 3x3 convolution."""

    def __init__(self, num_embeddings: int, channels: int, factor: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, channels)
        self.inner = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1)
            for _ in range(max(0, factor.bit_length() - 1))
        )
        self.outer = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, top_codes: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.inner(self.embedding(top_codes).permute(0, 3, 1, 2)))  # (B, h, w, C) -> (B, C, h, w)
        for conv in self.up:
            x = F.relu(conv(x))
        return self.outer(x)


class InputStage(nn.Module):
    """ReLU(7x7 mask-A convolution + conditional bias)."""

    radius: int

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        num_classes: int | None,
        context: int | None = None,
    ) -> None:
        super().__init__()
        self.conv = MaskedConv2d(in_channels, channels, kernel_size, "A")
        self.condition = ConditionalBias(num_classes, channels) if num_classes else None
        self.context = _context_projection(context, channels)
        self.radius = kernel_size // 2

    def extra(self, condition: torch.Tensor | None, context: torch.Tensor | None) -> Extra:
        """What this stage adds to its pre-activations for slice indices ``condition`` (B,) and
        context features (B, context_channels, h, w) (see the module doc)."""
        return _extra(self.condition, condition, self.context, context)

    def forward(self, x: torch.Tensor, extra: Extra = 0.0) -> torch.Tensor:
        return F.relu(_add(self.conv(x), extra))


class PixelResidualBlock(nn.Module):
    """``x + ReLU(Conv1x1(ReLU(MaskB3x3(ReLU(Conv1x1(x))) + bias)))`` (the seed's residual block)."""

    radius: int

    def __init__(
        self, channels: int, kernel_size: int, num_classes: int | None, context: int | None = None
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, kernel_size=1)
        self.masked = MaskedConv2d(channels // 2, channels // 2, kernel_size, "B")
        self.expand = nn.Conv2d(channels // 2, channels, kernel_size=1)
        self.condition = ConditionalBias(num_classes, channels // 2) if num_classes else None
        self.context = _context_projection(context, channels // 2)
        self.radius = kernel_size // 2

    def extra(self, condition: torch.Tensor | None, context: torch.Tensor | None) -> Extra:
        """What this block adds after its masked convolution (see :meth:`InputStage.extra`)."""
        return _extra(self.condition, condition, self.context, context)

    def forward(self, x: torch.Tensor, extra: Extra = 0.0) -> torch.Tensor:
        h = F.relu(self.reduce(x))
        h = F.relu(_add(self.masked(h), extra))
        return x + F.relu(self.expand(h))


class OutputHead(nn.Module):
    """ReLU, a 1x1 mask-B convolution, ReLU, and a 1x1 convolution to ``num_embeddings`` logits."""

    radius: int

    def __init__(self, channels: int, num_embeddings: int) -> None:
        super().__init__()
        self.hidden = MaskedConv2d(channels, channels, 1, "B")
        self.logits = nn.Conv2d(channels, num_embeddings, kernel_size=1)
        self.radius = 0

    def extra(self, condition: torch.Tensor | None, context: torch.Tensor | None) -> Extra:
        """Nothing: the head is conditioned through the stages before it."""
        return 0.0

    def forward(self, state: State, extra: Extra = 0.0) -> torch.Tensor:
        x = state[1] if isinstance(state, tuple) else state
        return self.logits(F.relu(self.hidden(F.relu(x))))


class PositionalEmbedding(nn.Module):
    """A learned embedding of each code-map position, added to the code embeddings so the prior
    knows where in the slice it is (a data-independent input, so causality is unchanged)."""

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(1, channels, height, width))
        nn.init.normal_(self.table, std=0.02)

    def forward(self, x: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
        top, left = offset
        height, width = x.shape[-2:]
        if top + height > self.table.shape[2] or left + width > self.table.shape[3]:
            raise ValueError(f"code map larger than the positional table {tuple(self.table.shape[2:])}")
        return x + self.table[:, :, top : top + height, left : left + width].to(x.dtype)


def _positional(config: PriorConfig) -> PositionalEmbedding | None:
    if not config.positional:
        return None
    if config.code_height is None or config.code_width is None:
        raise ValueError("prior.positional needs prior.code_height and prior.code_width (set by train-prior)")
    return PositionalEmbedding(config.embedding_dim, config.code_height, config.code_width)


class StagedPrior(nn.Module):
    """Shared by both priors: a code embedding (plus optional positional embedding), a list of
    causal ``stages`` with known radii, and ``forward(codes, condition) -> logits (B, K, h, w)``."""

    def __init__(self, config: PriorConfig, num_embeddings: int, stages: Sequence[nn.Module]) -> None:
        super().__init__()
        self.config = config
        self.num_embeddings = num_embeddings
        self.embedding = nn.Embedding(num_embeddings, config.embedding_dim)
        self.position = _positional(config)
        self.context = (
            ContextNet(config.context_num_embeddings, config.context_channels, config.context_factor)
            if config.context_num_embeddings
            else None
        )
        self.stages = nn.ModuleList(stages)

    def embed(self, codes: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> State:
        """Input state for ``codes`` whose top-left corner sits at ``offset`` in the full map."""
        x = self.embedding(codes).permute(0, 3, 1, 2)  # (B, h, w, E) -> (B, E, h, w)
        return self.position(x, offset) if self.position is not None else x

    def context_features(self, top_codes: torch.Tensor | None) -> torch.Tensor | None:
        """The context map (B, context_channels, h, w) for top codes, or None for an unconditioned prior."""
        if self.context is None:
            if top_codes is not None:
                raise ValueError("this prior is not conditioned on a top code map")
            return None
        if top_codes is None:
            raise ValueError("this prior is conditioned on a top code map: pass context=(B, h_top, w_top) codes")
        return self.context(top_codes)

    def extras(self, condition: torch.Tensor | None, context: torch.Tensor | None) -> list[Extra]:
        """Each stage's ``extra`` for slice indices ``condition`` (B,) and top codes ``context``
        (B, h/f, w/f): the part of the computation that does not depend on the codes."""
        features = self.context_features(context)
        return [stage.extra(condition, features) for stage in self.stages]  # type: ignore[operator]

    def forward(
        self, codes: torch.Tensor, condition: torch.Tensor | None = None, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, K, h, w); ``context`` holds the top codes (B, h/f, w/f) of a two-level run."""
        state = self.embed(codes)
        for stage, extra in zip(self.stages, self.extras(condition, context), strict=True):
            state = stage(state, extra)
        assert isinstance(state, torch.Tensor)
        return state

    @property
    def receptive_radius(self) -> int:
        """How far (in rows/columns) a position's logits can look back."""
        return sum(stage.radius for stage in self.stages)  # type: ignore[misc]


class PixelCNN(StagedPrior):
    """The seed prior: embedding, 7x7 mask-A conv, residual blocks with 3x3 mask-B convs, output head.

    ``forward(codes (B, h, w) int64, condition (B,) | None) -> logits (B, num_embeddings, h, w)``.
    """

    def __init__(self, config: PriorConfig, num_embeddings: int) -> None:
        classes = config.num_slices if config.condition_on_slice else None
        channels, context = config.hidden_channels, _context_channels(config)
        stages = (
            [InputStage(config.embedding_dim, channels, config.input_kernel_size, classes, context)]
            + [
                PixelResidualBlock(channels, config.kernel_size, classes, context)
                for _ in range(config.num_layers)
            ]
            + [OutputHead(channels, num_embeddings)]
        )
        super().__init__(config, num_embeddings, stages)


def _gate(x: torch.Tensor) -> torch.Tensor:
    value, gate = x.chunk(2, dim=1)  # (B, 2C, h, w) -> 2 x (B, C, h, w)
    return torch.tanh(value) * torch.sigmoid(gate)


class GatedStage(nn.Module):
    """One gated layer with a vertical stack (rows above) and a horizontal stack (left on the row).

    The vertical stack's output at row r sees rows <= r; it reaches the horizontal stack shifted
    down by one row, so the horizontal output at (r, c) sees every row above within the kernel and
    the row itself up to c (mask B) or c - 1 (mask A, first layer): no blind spot.
    """

    radius: int

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        first: bool,
        num_classes: int | None,
        context: int | None = None,
    ) -> None:
        super().__init__()
        self.reach = kernel_size // 2
        self.first = first
        self.vertical = nn.Conv2d(in_channels, 2 * channels, kernel_size=(self.reach + 1, kernel_size))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, kernel_size=(1, self.reach + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, kernel_size=1)
        self.horizontal_out = nn.Conv2d(channels, channels, kernel_size=1)
        self.condition = ConditionalBias(num_classes, 2 * channels) if num_classes else None
        self.context = _context_projection(context, 2 * channels)
        self.radius = self.reach + 1

    def extra(self, condition: torch.Tensor | None, context: torch.Tensor | None) -> Extra:
        """What both stacks add before their gates (see :meth:`InputStage.extra`)."""
        return _extra(self.condition, condition, self.context, context)

    def forward(self, state: State, extra: Extra = 0.0) -> State:
        assert isinstance(state, tuple)
        v, h = state
        v_pre = self.vertical(F.pad(v, (self.reach, self.reach, self.reach, 0)))  # rows r-half..r
        v_shifted = F.pad(v_pre, (0, 0, 1, 0))[:, :, :-1]  # row r now holds row r-1 (causal)
        h_in = F.pad(h, (1, 0))[:, :, :, :-1] if self.first else h  # mask A: column c holds c-1
        h_pre = self.horizontal(F.pad(h_in, (self.reach, 0, 0, 0))) + self.vertical_to_horizontal(v_shifted)
        v_out = _gate(_add(v_pre, extra))
        h_out = self.horizontal_out(_gate(_add(h_pre, extra)))
        return v_out, (h_out if self.first else h + h_out)


class GatedPixelCNN(StagedPrior):
    """Gated PixelCNN prior (van den Oord et al. 2016): a mask-A gated layer with
    ``input_kernel_size``, ``num_layers`` mask-B gated layers with ``kernel_size``, output head."""

    def __init__(self, config: PriorConfig, num_embeddings: int) -> None:
        classes = config.num_slices if config.condition_on_slice else None
        channels, context = config.hidden_channels, _context_channels(config)
        first = GatedStage(config.embedding_dim, channels, config.input_kernel_size, True, classes, context)
        rest = [
            GatedStage(channels, channels, config.kernel_size, False, classes, context)
            for _ in range(config.num_layers)
        ]
        super().__init__(config, num_embeddings, [first, *rest, OutputHead(channels, num_embeddings)])

    def embed(self, codes: torch.Tensor, offset: tuple[int, int] = (0, 0)) -> State:
        """Input state (vertical, horizontal) for ``codes`` placed at ``offset`` in the full map."""
        x = super().embed(codes, offset)
        assert isinstance(x, torch.Tensor)
        return x, x


def _context_channels(config: PriorConfig) -> int | None:
    return config.context_channels if config.context_num_embeddings else None
