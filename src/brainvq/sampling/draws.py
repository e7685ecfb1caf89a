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


COUPLINGS = ("none", "shared", "chain")  # how the rows of one draw go together (see :func:`draw`)


def draw(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_p: float = 1.0,
    coupling: str = "none",
) -> torch.Tensor:
    """Sample one code per row of ``logits`` (B, K) from softmax(logits / temperature) (Gumbel-max),
    restricted to the :func:`nucleus` of probability ``top_p`` when it is below 1.

    ``coupling`` says how the rows go together; every row is an exact draw from its own distribution
    whichever it is. ``none``: independent. ``shared``: one row of Gumbel noise serves every row, so
    rows whose distributions agree draw the same code (a Gumbel-max coupling). ``chain``: the rows are
    the links of a chain (the slices of one stack, in order) and each row is maximally coupled to the
    row before it (:func:`chain_draw`). The noise drawn from ``generator`` never depends on the values.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    rows = 1 if coupling == "shared" else logits.shape[0]
    uniform = torch.rand((rows, logits.shape[1]), generator=generator, dtype=torch.float32)
    uniform = uniform.clamp_(1e-20, 1.0 - 1e-7).to(logits.device)
    keep = torch.rand(logits.shape[0], generator=generator, dtype=torch.float32) if coupling == "chain" else None
    if temperature <= 0:
        return logits.argmax(1)
    scaled = logits.float() / temperature
    if top_p < 1.0:
        scaled = nucleus(scaled, top_p)
    gumbel = -torch.log(-torch.log(uniform))
    if keep is not None:
        return chain_draw(scaled, gumbel, keep)
    return (scaled + gumbel).argmax(1)


def chain_draw(scaled: torch.Tensor, gumbel: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows (B, K) of logits drawn as a chain of maximal couplings (Lindvall 1992; the coupling behind
    speculative sampling, Leviathan et al. 2023): row 0 by Gumbel-max, then row r keeps row r-1's code x
    with probability min(1, p_r(x) / p_{r-1}(x)) and otherwise draws from the excess
    max(p_r - p_{r-1}, 0), normalised. If row r-1's code is a draw from p_{r-1}, row r's is one from
    p_r, and the two agree with the largest probability any coupling allows, 1 - TV(p_{r-1}, p_r).
    ``gumbel`` (B, K) and ``keep`` (B,) uniforms are the noise."""
    probs = torch.softmax(scaled, dim=1)  # (B, K); codes outside a nucleus have 0
    first = int((scaled[0] + gumbel[0]).argmax())
    excess = (probs[1:] - probs[:-1]).clamp_min(0)  # (B-1, K)
    fresh = (excess.log() + gumbel[1:]).argmax(1).tolist()  # each row's draw from its excess
    no_excess = (excess.sum(1) <= 0).tolist()  # p_r == p_{r-1}: row r keeps row r-1's code
    ratio = (probs[1:] / probs[:-1].clamp_min(1e-30)).cpu()  # (B-1, K): p_r / p_{r-1}
    keep_list = keep.tolist()
    codes = [first]
    for row in range(1, scaled.shape[0]):
        previous = codes[-1]
        kept = no_excess[row - 1] or keep_list[row] < float(ratio[row - 1, previous])
        codes.append(previous if kept else fresh[row - 1])
    return torch.tensor(codes, device=scaled.device)
