"""Code maps: every slice of a split encoded by the VQ-VAE into a (h, w) grid of code indices.

Stored per split as ``RUN/codes/{split}.pt`` (int16 indices plus subject id and slice index per
map; for a two-level VQ-VAE the top maps too), written atomically and reused by the priors'
training, evaluation and figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from brainvq.data.dataset import SliceDataset, iterate_batches
from brainvq.devices import autocast_context
from brainvq.errors import DataError, RunError
from brainvq.models.vqvae import AnyVQVAE, Codes
from brainvq.runs import atomic_torch_save


@dataclass
class CodeMaps:
    """The code maps of one split."""

    indices: torch.Tensor  # (N, h, w) int16 (int32 for codebooks over 32,767 entries)
    subjects: torch.Tensor  # (N,) int64, -1 when unknown
    slices: torch.Tensor  # (N,) int64, -1 when unknown
    split: str
    num_embeddings: int
    image_size: tuple[int, int]
    vqvae_hash: str = ""  # content hash of the VQ-VAE checkpoint that made these maps
    top_indices: torch.Tensor | None = None  # (N, h/t, w/t), two-level VQ-VAEs only
    top_num_embeddings: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def save(self, path: Path) -> None:
        atomic_torch_save(
            path,
            {
                "format": "brainvq-codes-v1",
                "indices": self.indices,
                "subjects": self.subjects,
                "slices": self.slices,
                "split": self.split,
                "num_embeddings": self.num_embeddings,
                "image_size": list(self.image_size),
                "vqvae_hash": self.vqvae_hash,
                "top_indices": self.top_indices,
                "top_num_embeddings": self.top_num_embeddings,
            },
        )

    @classmethod
    def load(cls, path: Path) -> CodeMaps:
        if not Path(path).is_file():
            raise RunError(f"{path}: code maps not found (run `brainvq encode` first)")
        try:
            data: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise RunError(f"{path}: unreadable code maps ({type(error).__name__}: {error})") from None
        if not isinstance(data, dict) or data.get("format") != "brainvq-codes-v1":
            raise RunError(f"{path}: not a brainvq code-map file")
        return cls(
            data["indices"],
            data["subjects"],
            data["slices"],
            data["split"],
            data["num_embeddings"],
            tuple(data["image_size"]),
            str(data.get("vqvae_hash", "")),
            data.get("top_indices"),
            data.get("top_num_embeddings"),
        )

    def check_made_by(self, vqvae_hash: str, path: Path) -> CodeMaps:
        """Refuse code maps made by another VQ-VAE checkpoint than ``vqvae_hash`` (stale after retraining)."""
        if self.vqvae_hash != vqvae_hash:
            raise RunError(
                f"{path}: stale code maps, made by VQ-VAE checkpoint {self.vqvae_hash or 'unknown'} but the "
                f"run's VQ-VAE is now {vqvae_hash}; run `brainvq encode` again"
            )
        return self

    def batch(self, indices: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        """A training batch: ``codes`` (B, h, w) int64 and ``slice`` (B,) int64; with top maps also
        ``context`` (B, h/t, w/t) int64, what the bottom prior of a two-level run is conditioned on."""
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"codes": self.indices[index].long(), "slice": self.slices[index]}
        if self.top_indices is not None:
            batch["context"] = self.top_indices[index].long()
        return batch

    def level(self, name: str, context_slices: Sequence[int] = (1,)) -> CodeMaps:
        """The maps one prior learns: ``bottom`` (these maps, with the top maps as context), ``top``
        (the top maps alone), ``top_reversed`` (the top maps turned by 180 degrees, so that a prior
        reading them in raster order reads the anatomy from the last row back: a second ordering for
        anomaly scores) or ``stack`` (the top maps, with earlier slices' as context:
        :func:`stack_context`). A one-level set has only ``bottom``."""
        if name == "bottom":
            return self
        if name == "stack":
            return self._stack_level(context_slices)
        if name not in TOP_LEVELS or self.top_indices is None or self.top_num_embeddings is None:
            raise RunError(f"{self.split} code maps have no {name!r} level")
        maps = self.top_indices if name == "top" else reverse_order(self.top_indices)
        return CodeMaps(
            maps, self.subjects, self.slices, self.split, self.top_num_embeddings, self.image_size, self.vqvae_hash,
        )  # fmt: skip

    def _stack_level(self, context_slices: Sequence[int] = (1,)) -> CodeMaps:
        """The stack prior's maps: each top map with the maps of earlier slices of the same subject as its
        context (:func:`stack_context`; the code ``top_num_embeddings``, "no previous slice", where there
        is none): (N, h, w) for one context slice, (N, M, h, w) for M."""
        if self.top_indices is None or self.top_num_embeddings is None:
            raise RunError(f"{self.split} code maps have no top maps: the stack prior needs a two-level run")
        if bool((self.subjects < 0).any()) or bool((self.slices < 0).any()):
            raise RunError(f"{self.split} code maps lack subject ids or slice indices: no stacks to learn from")
        where = {(int(s), int(k)): i for i, (s, k) in enumerate(zip(self.subjects, self.slices, strict=True))}
        previous = self.top_indices.new_full((len(self), len(context_slices), *self.top_indices.shape[1:]),
                                             self.top_num_embeddings)  # fmt: skip
        for i, (subject, index) in enumerate(zip(self.subjects.tolist(), self.slices.tolist(), strict=True)):
            for place, before_index in enumerate(stack_context(index, context_slices)):
                before = where.get((subject, before_index)) if before_index is not None else None
                if before is not None:
                    previous[i, place] = self.top_indices[before]
        previous = previous[:, 0] if len(context_slices) == 1 else previous  # (N, 1, h, w) -> (N, h, w)
        return CodeMaps(
            self.top_indices, self.subjects, self.slices, self.split, self.top_num_embeddings, self.image_size,
            self.vqvae_hash, previous, self.top_num_embeddings + 1,
        )  # fmt: skip


TOP_LEVELS = ("top", "top_reversed")


def stack_context(index: int, context_slices: Sequence[int]) -> list[int | None]:
    """The slices whose top maps the stack prior reads for slice ``index``, one per ``context_slices``
    entry: n above 0 is slice index - n, 0 the stack's first slice; None where there is none (before
    slice 0, and the first slice for slice 0 itself)."""
    return [
        (index - n if index - n >= 0 else None) if n > 0 else (0 if index > 0 else None) for n in context_slices
    ]


def reverse_order(maps: torch.Tensor) -> torch.Tensor:
    """Maps (..., h, w) turned by 180 degrees: raster order backwards (its own inverse)."""
    return maps.flip(-2, -1)


def encode_levels(model: AnyVQVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(bottom, top) code maps of ``images``; ``top`` is None for a one-level VQ-VAE."""
    codes = model.encode(images)
    return codes.bottom, codes.top


def decode_levels(model: AnyVQVAE, bottom: torch.Tensor, top: torch.Tensor | None = None) -> torch.Tensor:
    """Images (B, 1, H, W) in [0, 1] from the bottom map and, for a two-level VQ-VAE, the top map."""
    if model.num_levels == 2 and top is None:
        raise RunError("this VQ-VAE has two levels: decoding needs the top code map too")
    return model.decode(Codes(bottom.long(), top.long() if top is not None else None))


@torch.no_grad()
def decode_in_batches(
    model: AnyVQVAE, bottom: torch.Tensor, top: torch.Tensor | None, batch_size: int, device: torch.device | str
) -> torch.Tensor:
    """:func:`decode_levels` over ``batch_size`` maps at a time on ``device``; the images come back on the CPU."""
    return torch.cat([
        decode_levels(
            model, bottom[s : s + batch_size].to(device), top[s : s + batch_size].to(device) if top is not None else None
        ).cpu()
        for s in range(0, len(bottom), batch_size)
    ])  # fmt: skip


def slice_condition(slices: torch.Tensor, num_slices: int, where: str = "") -> torch.Tensor:
    """The one rule for slice conditioning, in training, evaluation and sampling: indices must lie in
    0..num_slices-1. Unknown slices (-1, plain folders) and larger indices are errors, never clamped."""
    slices = torch.as_tensor(slices, dtype=torch.long)
    if slices.numel() and (int(slices.min()) < 0 or int(slices.max()) >= num_slices):
        bad = int(slices.min()) if int(slices.min()) < 0 else int(slices.max())
        problem = "unknown (-1)" if bad < 0 else f"{bad}, outside 0..{num_slices - 1}"
        raise DataError(
            f"{where + ': ' if where else ''}slice index {problem}; a slice-conditioned prior needs slice "
            f"indices 0..{num_slices - 1} (set prior.num_slices, or prior.condition_on_slice=false)"
        )
    return slices


def check_image_size(model: AnyVQVAE, image_size: tuple[int, int], trained_size: tuple[int, int] | None) -> None:
    """Refuse images the model cannot encode, or of another size than it was trained on."""
    try:
        model.code_shape(image_size)
    except ValueError as error:
        raise RunError(str(error)) from None
    if trained_size is not None and tuple(trained_size) != tuple(image_size):
        raise RunError(
            f"the data's images are {image_size[1]}x{image_size[0]} but this VQ-VAE was trained on "
            f"{trained_size[1]}x{trained_size[0]} images"
        )


@torch.no_grad()
def encode_dataset(
    model: AnyVQVAE,
    dataset: SliceDataset,
    split: str,
    *,
    batch_size: int = 64,
    device: torch.device | None = None,
    autocast_dtype: torch.dtype | None = None,
    vqvae_hash: str = "",
) -> CodeMaps:
    """Encode every slice of ``dataset`` with ``model`` (in eval mode), batch by batch (``dataset`` may
    stream from disk: peak memory is one batch of images plus the code maps)."""
    device = device or next(model.parameters()).device
    model.eval()
    chunks, top_chunks = [], []
    largest = max(model.config.num_embeddings, model.config.top_num_embeddings)
    code_dtype = torch.int16 if largest <= 32767 else torch.int32
    for batch in iterate_batches(dataset, batch_size):
        images = batch["image"].to(device)
        with autocast_context(device, autocast_dtype):
            bottom, top = encode_levels(model, images)
        chunks.append(bottom.to(code_dtype).cpu())
        if top is not None:
            top_chunks.append(top.to(code_dtype).cpu())
    two_levels = model.num_levels == 2
    return CodeMaps(
        top_indices=torch.cat(top_chunks) if top_chunks else None,
        top_num_embeddings=model.config.top_num_embeddings if two_levels else None,
        indices=torch.cat(chunks),
        subjects=dataset.subjects(),
        slices=dataset.slice_indices(),
        split=split,
        num_embeddings=model.config.num_embeddings,
        image_size=dataset.image_size,
        vqvae_hash=vqvae_hash,
    )
