"""The ``score`` and ``anomaly`` commands: maps for every input, written as arrays, PNGs and overlays,
scored against lesion masks when given, with the threshold chosen on healthy validate slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainvq.anomaly.inputs import Inputs
from brainvq.anomaly.likelihood import (
    code_nll_bits,
    encode,
    top_nll_bits,
)
from brainvq.anomaly.maps import image_score
from brainvq.anomaly.methods import method_maps, resolve_methods, segment
from brainvq.anomaly.operating import brain_of, operating_thresholds
from brainvq.anomaly.reference import healthy_reference
from brainvq.anomaly.scoring import PixelScores
from brainvq.data.dataset import iterate_batches
from brainvq.files import atomic_write_json
from brainvq.runs import LoadedRun


def _slices_or_none(inputs: Inputs, indices: list[int]) -> torch.Tensor | None:
    chosen = inputs.slices[indices]
    return chosen if bool((chosen >= 0).all()) else None


def overlay(image: np.ndarray, heat: np.ndarray, scale: float) -> np.ndarray:
    """RGB uint8: the gray slice with ``heat`` (same size, 0..scale) blended on top in 'inferno'."""
    from matplotlib import colormaps

    level = np.clip(heat / max(scale, 1e-12), 0, 1)
    colours = colormaps["inferno"](level)[..., :3]
    gray = np.repeat(image[..., None], 3, axis=2)
    alpha = (0.15 + 0.65 * level)[..., None] * (level[..., None] > 0.02)
    return ((gray * (1 - alpha) + colours * alpha) * 255 + 0.5).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from brainvq.files import atomic_save_image

    atomic_save_image(path, Image.fromarray(array))


def score_images(
    run: LoadedRun, inputs: Inputs, out: Path, *, batch_size: int = 16, maps: bool = True
) -> dict[str, Any]:
    """``brainvq score``: NLL maps (bits per code), totals per image, overlays and JSON under ``out``."""
    per_image = []
    for batch in iterate_batches(inputs.dataset, batch_size):
        index = batch["index"].tolist()
        encoded = encode(run, batch["image"])
        slices = _slices_or_none(inputs, index)
        nll = code_nll_bits(run, encoded.codes, slices, encoded.top)
        top_nll = top_nll_bits(run, encoded.top, slices) if encoded.top is not None else None
        for k, i in enumerate(index):
            name = inputs.names[i]
            entry = {"image": name, "nll_bits": float(nll[k].sum()), "bits_per_code": float(nll[k].mean())}
            if top_nll is not None:
                entry["top_nll_bits"], entry["top_bits_per_code"] = (
                    float(top_nll[k].sum()),
                    float(top_nll[k].mean()),
                )
            per_image.append(entry)
            if maps:
                np.save(out / "nll" / f"{Path(name).stem}.npy", nll[k].numpy().astype(np.float32))
                if top_nll is not None:
                    np.save(out / "nll" / f"{Path(name).stem}_top.npy", top_nll[k].numpy().astype(np.float32))
                scale = batch["image"].shape[-1] // nll.shape[-1]
                heat = nll[k].repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
                _save_png(out / "overlays" / name, overlay(batch["image"][k, 0].numpy(), heat, 12.0))
    totals = [p["bits_per_code"] for p in per_image]
    result = {
        "images": len(per_image),
        "mean_bits_per_code": float(np.mean(totals)),
        "vqvae_hash": run.vqvae_hash,
        "prior_hash": run.prior_hash,
        "per_image": per_image,
    }
    if run.levels == 2:
        result["top_mean_bits_per_code"] = float(np.mean([p["top_bits_per_code"] for p in per_image]))
        result["top_prior_hash"] = run.top_prior_hash
    atomic_write_json(out / "scores.json", result)
    return result


class SegmentCounts:
    """Dice at a fixed threshold, with small components removed (:func:`segment`), summed over batches."""

    def __init__(self) -> None:
        self.overlap = self.predicted = self.true = 0

    def update(self, maps: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor, threshold: float) -> None:
        predicted = torch.from_numpy(segment(maps.numpy(), threshold)) & brain
        self.overlap += int((predicted & truth & brain).sum())
        self.predicted += int(predicted.sum())
        self.true += int((truth & brain).sum())

    def dice(self) -> float:
        return 2 * self.overlap / max(self.predicted + self.true, 1)


def detect(
    run: LoadedRun,
    inputs: Inputs,
    out: Path,
    *,
    methods: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 16,
    maps: bool = True,
    reference_data: str | Path | None = None,
) -> dict[str, Any]:
    """``brainvq anomaly``: each method's map for every input (:mod:`brainvq.anomaly.methods`); the chosen
    one's and the residual's written as .npy, PNG and overlays; per-image scores; and, with truth, per
    method: pixel AP/AUROC, best Dice, Dice at the operating threshold and image AUROC/AP."""
    import time

    from PIL import Image

    names = resolve_methods(run, methods)
    reference = healthy_reference(run, reference_data)
    operating = operating_thresholds(run, reference, names, reference_data, seed=seed, batch_size=batch_size)
    scores = {m: PixelScores.empty() for m in names}
    segments = {m: SegmentCounts() for m in names}
    seconds = 0.0
    per_image: list[dict[str, Any]] = []
    written = {names[0]: "anomaly", "residual": "residual"}
    for batch in iterate_batches(inputs.dataset, batch_size):
        index = batch["index"].tolist()
        slices, brain = _slices_or_none(inputs, index), brain_of(batch)
        started = time.perf_counter()
        result = method_maps(run, reference, batch["image"], slices, brain, names, seed=seed + index[0])
        seconds += time.perf_counter() - started
        if inputs.truth is not None:
            truth = torch.stack(
                [torch.from_numpy(np.asarray(Image.open(inputs.truth[i]).convert("L")) > 0) for i in index]
            )
            for method in names:
                scores[method].update(result[method], truth, brain)
                segments[method].update(result[method], truth, brain, operating[method])
        image_scores = {m: image_score(result[m]) for m in names}
        for k, i in enumerate(index):
            per_image.append(
                {"image": inputs.names[i], **{f"{m}_score": float(image_scores[m][k]) for m in names}}
            )
            if maps:
                _write_maps(out, inputs.names[i], batch["image"][k, 0].numpy(),
                            {folder: result[m][k].numpy() for m, folder in written.items() if m in result},
                            {folder: operating[m] for m, folder in written.items() if m in result})  # fmt: skip
    summary: dict[str, Any] = {
        "images": len(per_image),
        "chosen_method": names[0],
        "operating_thresholds": operating,
        "seconds_per_32_slices": 32
        * seconds
        / max(len(per_image), 1),  # all methods; each: benchmarks/anomaly_speed.py
        "vqvae_hash": run.vqvae_hash,
        "prior_hash": run.prior_hash,
        "top_prior_hash": run.top_prior_hash,
    }
    if inputs.truth is not None:
        summary["methods"] = {}
        for method in names:
            summary["methods"][method] = {
                **scores[method].summary(),
                "dice_at_operating_threshold": segments[method].dice(),
            }
        summary["lesion_pixel_fraction"] = float(torch.cat(scores[names[0]].truths).float().mean())
    summary["per_image"] = per_image
    atomic_write_json(out / "anomaly.json", summary)
    if maps and inputs.truth is not None:
        summary["figure"] = str(examples_figure(out, inputs))
    return summary


def _write_maps(
    out: Path, name: str, image: np.ndarray, heats: dict[str, np.ndarray], scales: dict[str, float]
) -> None:
    """The maps of one slice: ``FOLDER/<stem>.npy`` (float16), a gray PNG and an overlay per folder; the
    colour scale runs to twice the method's operating threshold."""
    stem = Path(name).stem
    for folder, heat in heats.items():
        top = 2 * max(scales[folder], 1e-6)
        np.save(out / folder / f"{stem}.npy", heat.astype(np.float16))
        _save_png(out / folder / name, (np.clip(heat / top, 0, 1) * 255).astype(np.uint8))
        _save_png(out / f"{folder}_overlays" / name, overlay(image, heat, top))


def examples_figure(out: Path, inputs: Inputs, count: int = 6, show_inputs: bool = True) -> Path:
    """``OUT/anomaly_examples.png``: for ``count`` lesioned slices spread over the split, the input, the
    true lesion mask, the chosen method's map and the residual's map (each up to twice its operating
    threshold, from ``OUT/anomaly.json``). ``show_inputs=False`` leaves the input row out
    (``anomaly_maps.png``, for sharing without images)."""
    import json

    import matplotlib.pyplot as plt
    from PIL import Image

    from brainvq.figures import save_figure

    assert inputs.truth is not None
    summary = json.loads((out / "anomaly.json").read_text())
    chosen, scales = summary["chosen_method"], summary["operating_thresholds"]
    lesioned = [i for i, path in enumerate(inputs.truth) if np.asarray(Image.open(path)).any()]
    picks = lesioned[:: max(1, len(lesioned) // count)][:count]
    rows = ("input", "true lesion", f"{chosen} (chosen)", "VQ-VAE residual")[0 if show_inputs else 1 :]
    figure, axes = plt.subplots(len(rows), len(picks), figsize=(2.2 * len(picks), 2.3 * len(rows)), squeeze=False)
    for col, i in enumerate(picks):
        name, stem = inputs.names[i], Path(inputs.names[i]).stem
        panels = [
            (inputs.dataset.images([i])[0, 0].numpy(), "gray", 1.0),
            (np.asarray(Image.open(inputs.truth[i])) > 0, "gray", 1.0),
            (np.load(out / "anomaly" / f"{stem}.npy").astype(np.float32), "inferno", 2 * scales[chosen]),
            (
                np.load(out / "residual" / f"{stem}.npy").astype(np.float32),
                "inferno",
                2 * scales.get("residual", 0.15),
            ),
        ][0 if show_inputs else 1 :]
        for row, (panel, colours, top) in enumerate(panels):
            axes[row, col].imshow(panel, cmap=colours, vmin=0, vmax=top)
            axes[row, col].axis("off")
            if col == 0:  # the row's name, inside its first panel
                axes[row, col].text(
                    0.03, 0.03, rows[row], color="white", fontsize=7, transform=axes[row, col].transAxes
                )
        axes[0, col].set_title(name.replace(".nii.png", ""), fontsize=7)
    return save_figure(figure, out / ("anomaly_examples.png" if show_inputs else "anomaly_maps.png"))


def prepare_out(out: Path, folders: tuple[str, ...]) -> None:
    from brainvq.files import mark_owned

    mark_owned(out, "anomaly")
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
