"""The vector quantiser: nearest-codebook lookup, straight-through gradients, and the options that
keep a codebook alive (EMA updates, data initialisation, dead-code restart).

References: van den Oord et al. 2017, "Neural Discrete Representation Learning" (codebook and
commitment losses, EMA variant in the appendix); Razavi et al. 2019, "Generating Diverse
High-Fidelity Images with VQ-VAE-2" (EMA); Dhariwal et al. 2020, "Jukebox" and Zeghidour et al.
2021, "SoundStream" (restarting dead codes from encoder outputs). Distances and EMA statistics are
always computed in float32, also under mixed precision, and EMA statistics, initialisation and
restarts are all-reduced/broadcast so every DDP rank holds the same codebook.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class QuantizerOutput(NamedTuple):
    """What the quantiser returns for a batch of encoder outputs ``z`` (B, D, h, w)."""

    quantized: torch.Tensor  # (B, D, h, w), straight-through: gradients flow to z
    indices: torch.Tensor  # (B, h, w) int64
    loss: torch.Tensor  # codebook loss (loss variant only) + commitment_cost * commitment loss
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor  # exp(entropy) of code usage in this batch
    counts: torch.Tensor  # (K,) uses of each code in this batch (all ranks)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(tensor)
    return tensor


def _broadcast(tensor: torch.Tensor) -> torch.Tensor:
    if _distributed():
        dist.broadcast(tensor, src=0)
    return tensor


def kmeans_plus_plus(vectors: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) of ``k`` centres from ``vectors`` (N, D)."""
    first = torch.randint(len(vectors), (1,), generator=generator, device=vectors.device)
    centres = [vectors[first]]
    nearest = ((vectors - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = nearest / nearest.sum() if nearest.sum() > 0 else torch.ones_like(nearest) / len(nearest)
        pick = torch.multinomial(probs, 1, generator=generator)
        centres.append(vectors[pick])
        nearest = torch.minimum(nearest, ((vectors - vectors[pick]) ** 2).sum(1))
    return torch.cat(centres)


class VectorQuantizer(nn.Module):
    """Maps each D-dim vector to its nearest of ``num_embeddings`` codebook entries (Euclidean).

    ``kind='loss'`` learns the codebook by gradient (codebook loss), ``kind='ema'`` by exponential
    moving averages of assigned vectors. ``init``: ``uniform`` (U(-1/K, 1/K), the seed's), ``data``
    (random encoder outputs of the first training batch) or ``kmeans++``. Codes unused for
    ``dead_code_steps`` training steps are re-seeded from current encoder outputs (0 disables).
    """

    codebook: torch.Tensor
    ema_cluster_size: torch.Tensor
    ema_embed_sum: torch.Tensor
    steps_unused: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_embeddings: int = 512,
        embedding_dim: int = 64,
        commitment_cost: float = 0.25,
        kind: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        init: str = "data",
        dead_code_steps: int = 100,
    ) -> None:
        super().__init__()
        if kind not in ("ema", "loss"):
            raise ValueError(f"quantizer kind must be 'ema' or 'loss', got {kind!r}")
        if init not in ("data", "kmeans++", "uniform"):
            raise ValueError(f"codebook init must be 'data', 'kmeans++' or 'uniform', got {init!r}")
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.kind = kind
        self.decay = decay
        self.epsilon = epsilon
        self.init = init
        self.dead_code_steps = dead_code_steps
        codebook = torch.empty(num_embeddings, embedding_dim).uniform_(-1 / num_embeddings, 1 / num_embeddings)
        if kind == "loss":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
        # Consistent EMA statistics: each code starts as the mean of one pseudo-vector (itself), so
        # sum / size equals the codebook and an unused code keeps its place instead of being scaled up.
        self.register_buffer("ema_cluster_size", torch.ones(num_embeddings))
        self.register_buffer("ema_embed_sum", codebook.clone())
        self.register_buffer("steps_unused", torch.zeros(num_embeddings, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(init == "uniform"))

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> QuantizerOutput:
        batch, dim, height, width = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, dim)  # (B, D, h, w) -> (B*h*w, D)
        if self.training and not bool(self.initialized):
            self._initialize(flat.detach())
        indices = self.nearest(flat)
        quantized = self.codebook[indices]  # (B*h*w, D)
        counts = torch.bincount(indices, minlength=self.num_embeddings).float()
        if self.training:
            counts = _all_reduce(counts)  # every rank sees the global usage (EMA, restarts, logs)
        if self.training and self.kind == "ema":
            self._ema_update(flat.detach(), indices, counts)
        if self.training and self.dead_code_steps > 0:
            self._restart_dead_codes(flat.detach(), counts)
        quantized = quantized.reshape(batch, height, width, dim).permute(0, 3, 1, 2)  # -> (B, D, h, w)
        commitment_loss = F.mse_loss(z, quantized.detach())
        if self.kind == "loss":
            codebook_loss = F.mse_loss(quantized, z.detach())
        else:
            codebook_loss = torch.zeros((), device=z.device)
        loss = codebook_loss + self.commitment_cost * commitment_loss
        if self.training:
            quantized = z + (quantized - z).detach()  # straight-through estimator
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        indices = indices.reshape(batch, height, width)  # (B*h*w,) -> (B, h, w)
        return QuantizerOutput(quantized, indices, loss, codebook_loss, commitment_loss, perplexity, counts)

    @torch.no_grad()
    def nearest(self, flat: torch.Tensor, chunk_size: int = 8192) -> torch.Tensor:
        """Index of the nearest codebook entry for each row of ``flat`` (N, D), in float32.

        ``argmin_k |z - e_k|^2 = argmin_k (|e_k|^2 - 2 z.e_k)``; rows are processed in chunks so the
        (chunk, K) distance matrix stays in cache instead of one (N, K) matrix of hundreds of MB.
        """
        codebook = self.codebook.detach().float()
        codebook_norms = codebook.pow(2).sum(1)  # (K,)
        flat = flat.float()
        out = torch.empty(len(flat), dtype=torch.long, device=flat.device)
        for start in range(0, len(flat), chunk_size):
            rows = flat[start : start + chunk_size]
            distances = torch.addmm(codebook_norms, rows, codebook.t(), alpha=-2.0)  # (chunk, K)
            out[start : start + chunk_size] = distances.argmin(1)
        return out

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook vectors for ``indices`` (B, h, w) as (B, D, h, w)."""
        return self.codebook[indices].permute(0, 3, 1, 2)  # (B, h, w, D) -> (B, D, h, w)

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        if self.init == "kmeans++":
            sample = flat[torch.randperm(len(flat), device=flat.device)[: 64 * self.num_embeddings]]
            codebook = kmeans_plus_plus(sample, self.num_embeddings)
        else:
            picks = torch.randint(len(flat), (self.num_embeddings,), device=flat.device)
            codebook = flat[picks].clone()
        self._set_codes(torch.arange(self.num_embeddings, device=flat.device), _broadcast(codebook))
        self.initialized.fill_(True)

    @torch.no_grad()
    def _set_codes(self, which: torch.Tensor, vectors: torch.Tensor) -> None:
        self.codebook.data[which] = vectors
        self.ema_embed_sum[which] = vectors
        self.ema_cluster_size[which] = 1.0
        self.steps_unused[which] = 0

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        embed_sum = torch.zeros_like(self.ema_embed_sum).index_add_(0, indices, flat)
        embed_sum = _all_reduce(embed_sum)
        self.ema_cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_embed_sum.mul_(self.decay).add_(embed_sum, alpha=1 - self.decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.epsilon) / (total + self.num_embeddings * self.epsilon) * total
        self.codebook.copy_(self.ema_embed_sum / smoothed[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        picks = torch.randint(len(flat), (len(dead),), device=flat.device)
        self._set_codes(dead, _broadcast(flat[picks].clone()))
