"""One draw per position: the temperature, the nucleus (top-p) and the Gumbel-max trick with a seeded generator."""

from __future__ import annotations

import torch

NUCLEUS_FIRST = 64  # how many of the most likely codes :func:`nucleus` sorts before it sorts them all


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """``logits`` (B, K) with every code outside the nucleus set to -inf: the nucleus is the smallest
    set of most likely codes whose probabilities sum to at least ``top_p`` (nucleus or top-p
    sampling, Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration"). It cuts the
    long tail of unlikely codes that an imperfect prior still gives mass to."""
    probs = torch.softmax(logits.float(), dim=1)
    num_codes = probs.shape[1]
    for largest in (min(NUCLEUS_FIRST, num_codes), num_codes):
        # a trained prior's nucleus is mostly a few codes: sort the largest first, all only if needed
        sorted_probs, order = probs.topk(largest, dim=1) if largest < num_codes else probs.sort(1, descending=True)
        total = sorted_probs.cumsum(dim=1)
        if largest == num_codes or bool((total[:, -1] >= top_p).all()):  # every nucleus lies inside
            break
    keep_sorted = total - sorted_probs < top_p  # the most likely code always stays
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(1, order, keep_sorted)
    return logits.float().masked_fill(~keep, float("-inf"))


def draw(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_p: float = 1.0,
    shared_noise: bool = False,
) -> torch.Tensor:
    """Sample one code per row of ``logits`` (B, K) from softmax(logits / temperature) (Gumbel-max),
    restricted to the :func:`nucleus` of probability ``top_p`` when it is below 1.

    Always draws (B, K) uniforms from ``generator`` so the random stream does not depend on values;
    with ``shared_noise``, one row of (1, K) uniforms serves every row: each row is still an exact
    draw from its own distribution, but rows whose distributions agree draw the same code (a
    Gumbel-max coupling; the slices of one stack, :mod:`brainvq.sampling.stacks`).
    """
    rows = 1 if shared_noise else logits.shape[0]
    uniform = torch.rand((rows, logits.shape[1]), generator=generator, dtype=torch.float32)
    uniform = uniform.clamp_(1e-20, 1.0 - 1e-7).to(logits.device)
    if temperature <= 0:
        return logits.argmax(1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = nucleus(scaled, top_p)
    gumbel = -torch.log(-torch.log(uniform))
    return (scaled + gumbel).argmax(1)
