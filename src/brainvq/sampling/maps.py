"""Code maps drawn from a prior: whole maps (:func:`sample_codes`), chosen positions drawn again
(:func:`resample_codes`), and top maps with the background check (:func:`draw_top_maps`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from tqdm import tqdm

from brainvq.models.priors import Prior
from brainvq.sampling.background import Background
from brainvq.sampling.draws import draw
from brainvq.sampling.fast import fast_sampler
from brainvq.sampling.paired import paired_sampler


@torch.no_grad()
def sample_codes(
    prior: Prior,
    num_samples: int,
    shape: tuple[int, int],
    *,
    generator: torch.Generator | int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    condition: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    sampler: str = "fast",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
    coupling: str = "none",
    guide: Guide | None = None,
) -> torch.Tensor:
    """Ancestral sampling in raster order from an all-zero map; returns codes (N, h, w) int64.

    ``generator`` is a CPU ``torch.Generator`` or a seed. ``condition`` holds one slice index per
    sample when the prior is conditioned; ``context`` the top codes (N, h/t, w/t) for the bottom
    prior of a two-level run. Same prior, seed, temperature, batch size and device give the same
    maps, with either sampler. ``coupling``: how the maps of a batch go together at each position
    (:func:`brainvq.sampling.draws.draw`: ``shared`` Gumbel noise, or a ``chain`` in batch order); each
    map is still an exact draw.
    """
    codes = torch.zeros(num_samples, *shape, dtype=torch.long)
    everywhere = torch.ones(num_samples, *shape, dtype=torch.bool)
    return resample_codes(
        prior, codes, everywhere, generator=generator, temperature=temperature, top_p=top_p,
        condition=condition, context=context, sampler=sampler, batch_size=batch_size, device=device, progress=progress,
        coupling=coupling, guide=guide,
    )  # fmt: skip


@torch.no_grad()
def resample_codes(
    prior: Prior,
    codes: torch.Tensor,
    resample: torch.Tensor,
    *,
    generator: torch.Generator | int = 0,
    temperature: float = 1.0,
    top_p: float = 1.0,
    condition: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    sampler: str = "fast",
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    progress: bool = False,
    coupling: str = "none",
    guide: Guide | None = None,
) -> torch.Tensor:
    """Ancestral sampling of the positions where ``resample`` (N, h, w) is True, in raster order,
    given every other code of ``codes`` (N, h, w); the rest are kept exactly. Returns new codes.

    Completion (keep the first rows) and anomaly "healing" (redraw unlikely codes) are this with
    different masks; plain sampling is this with every position. Positions that no map of a batch
    resamples are skipped by both samplers alike, so fast and naive still draw the same codes.
    ``guide``: a second prior over the same codes, read without context, whose log-probabilities,
    times its weight, are added to ``prior``'s (:class:`Guide`).
    """
    if sampler not in ("fast", "naive"):
        raise ValueError(f"sampler must be 'fast' or 'naive', got {sampler!r}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    device = torch.device(device)
    prior.eval()
    num_maps, height, width = codes.shape
    out = []
    bar = tqdm(
        total=int(resample.sum()),
        desc=f"sampling ({sampler})",
        disable=not progress,
        unit="code",
        unit_scale=True,
        mininterval=1.0,
    )
    for start in range(0, num_maps, batch_size):
        batch = codes[start : start + batch_size].to(device=device, dtype=torch.long).clone()
        redraw = resample[start : start + batch_size].to(device)
        cond = condition[start : start + batch_size].to(device) if condition is not None else None
        top = (
            context[start : start + batch_size].to(device=device, dtype=torch.long)
            if context is not None
            else None
        )
        guide_cond = cond if guide is not None and guide.prior.config.condition_on_slice else None
        both = (  # the prior and its guide stepped as one where they can be (the same logits, faster)
            paired_sampler((prior, guide.prior), batch, (cond, guide_cond), top)
            if sampler == "fast" and guide is not None
            else None
        )
        cache = fast_sampler(prior, batch, cond, top) if sampler == "fast" and both is None else None
        guide_cache = (
            fast_sampler(guide.prior, batch, guide_cond, None) if guide is not None and cache is not None else None
        )
        for i in range(height):
            for j in range(width):
                if not bool(redraw[:, i, j].any()):
                    continue
                if both is not None:
                    logits, guided = both.logits(i, j)
                else:
                    logits = cache.logits(i, j) if cache is not None else prior(batch, cond, top)[:, :, i, j]
                    if guide is not None:
                        guided = (
                            guide_cache.logits(i, j)
                            if guide_cache is not None
                            else guide.prior(batch, guide_cond)[:, :, i, j]
                        )
                if guide is not None:
                    logits = guide.combine(logits, guided)
                drawn = draw(logits, temperature, generator, top_p, coupling)
                batch[:, i, j] = torch.where(redraw[:, i, j], drawn, batch[:, i, j])
                bar.update(int(redraw[:, i, j].sum()))
            for row_cache in (cache, guide_cache):
                if row_cache is not None:
                    row_cache.finish_row(i)
        out.append(batch.cpu())
    bar.close()
    return torch.cat(out)


class Guide(NamedTuple):
    """A second prior that steers a draw: the codes are drawn from p(x) * q(x)^weight, renormalised,
    at each position (a product of experts; with the stack prior, q is the independent top prior given
    the slice index, which pulls each slice of a stack toward what its index looks like)."""

    prior: Prior
    weight: float

    def combine(self, logits: torch.Tensor, guided: torch.Tensor) -> torch.Tensor:
        """(B, K) logits of the product: log p + weight * log q."""
        return logits.float().log_softmax(1) + self.weight * guided.float().log_softmax(1)


MAX_REDRAWS = 10  # rounds of redrawing top maps with no background before keeping them
REDRAW_STREAM = 0x1E3779B97F4A7C15  # offsets the redraws' seed from the draw's: a stream of their own


class TopMaps(NamedTuple):
    """The top maps of a two-level draw, and how many were drawn again for want of background."""

    codes: torch.Tensor  # (N, h/t, w/t) int64
    redrawn: int  # maps drawn again at least once
    unresolved: int  # still flagged after MAX_REDRAWS rounds (kept as drawn last)


@torch.no_grad()
def draw_top_maps(
    top_prior: Prior,
    num_samples: int,
    shape: tuple[int, int],
    background: Background | None,
    *,
    generator: torch.Generator,
    condition: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    redraws: torch.Generator | None = None,
    **options: Any,
) -> TopMaps:
    """Draw ``num_samples`` top maps; with a ``background`` reference, draw the maps it flags again
    (each keeps its slice condition and its ``context``, the previous slice's map for the stack prior),
    round after round, until none is flagged or ``MAX_REDRAWS`` rounds have passed. ``options`` go to
    :func:`sample_codes` (temperature, top_p, sampler, ...).

    The redraws take their noise from a generator of their own (``redraws``; by default one seeded from
    ``generator``'s seed), so ``generator`` (which the bottom maps use next) runs on as without the check:
    the check changes the flagged samples and nothing else, and a seed still gives the same maps."""
    codes = sample_codes(top_prior, num_samples, shape, generator=generator, condition=condition, context=context,
                         **options)  # fmt: skip
    if background is None:
        return TopMaps(codes, 0, 0)
    options["generator"] = redraws if redraws is not None else redraw_generator(generator)
    flagged = torch.nonzero(background.flagged(codes)).flatten()
    redrawn = len(flagged)
    for _ in range(MAX_REDRAWS):
        if len(flagged) == 0:
            break
        again = condition[flagged] if condition is not None else None
        given = context[flagged] if context is not None else None
        codes[flagged] = sample_codes(top_prior, len(flagged), shape, condition=again, context=given, **options)
        flagged = flagged[background.flagged(codes[flagged])]
    return TopMaps(codes, redrawn, len(flagged))


def redraw_generator(generator: torch.Generator) -> torch.Generator:
    """The generator that :func:`draw_top_maps`'s redraws use: seeded from ``generator``'s seed, a
    stream apart from it."""
    return torch.Generator().manual_seed((generator.initial_seed() + REDRAW_STREAM) % 2**63)
