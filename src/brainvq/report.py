"""The run report: one self-contained HTML page (images embedded, no network) with the config,
metrics per evaluated split, training curves, codebook usage, reconstructions, samples and speed."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

from brainvq.runs import RunDir, atomic_write_text

METRIC_ROWS = [
    ("images", "images", "{:d}"),
    ("ssim", "SSIM (standard, Wang et al. 2004)", "{:.4f}"),
    ("ssim_seed", "ssim_seed (tf.image.ssim max_val=3, seed's definition)", "{:.4f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("ms_ssim", "MS-SSIM", "{:.4f}"),
    ("brain_ssim", "SSIM inside the brain", "{:.4f}"),
    ("brain_psnr", "PSNR inside the brain (dB)", "{:.2f}"),
    ("codes_used", "codes used", "{:d}"),
    ("perplexity", "code perplexity", "{:.1f}"),
    ("prior_accuracy", "prior accuracy", "{:.4f}"),
    ("prior_nll_bits", "prior NLL (bits per code)", "{:.4f}"),
    ("top_codes_used", "top codes used (two levels)", "{:d}"),
    ("top_only_ssim", "SSIM of the top map decoded alone (two levels; ~0: the decoder ignores it)", "{:.4f}"),
    ("top_prior_accuracy", "top prior accuracy (two levels)", "{:.4f}"),
    ("top_prior_nll_bits", "top prior NLL (bits per top code)", "{:.4f}"),
]

FIGURES = [
    ("vqvae_curves.png", "VQ-VAE training loss and validation SSIM/PSNR"),
    ("codebook_usage.png", "Codebook usage per epoch"),
    ("reconstructions_validate.png", "Reconstructions (validate)"),
    ("reconstructions_test.png", "Reconstructions (test)"),
    ("reconstructions_across_epochs.png", "Reconstructions across epochs"),
    ("prior_curves.png", "Prior NLL and accuracy (the bottom prior of a two-level run)"),
    ("prior_top_curves.png", "Top prior NLL and accuracy (two-level runs)"),
]

REALISM_KEYS = [
    ("n", "{:d}"), ("fd_judge", "{:.3f}"), ("kid_judge", "{:.4f}"), ("precision", "{:.3f}"), ("recall", "{:.3f}"),
    ("tissue_error", "{:.4f}"), ("slice_error", "{:.2f}"), ("ms_ssim_diversity", "{:.3f}"),
    ("memorised_fraction", "{:.3f}"),
]  # fmt: skip

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0} .sub{color:#666;margin-top:.2em} table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right} th:first-child,td:first-child{text-align:left}
figure{margin:1.5em 0} img{max-width:100%;border:1px solid #ddd} pre{background:#f6f6f6;padding:1em;overflow:auto}
figcaption{color:#555;font-size:.95em}
"""


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _format(value: Any, pattern: str) -> str:
    if value is None:
        return "–"
    try:
        return pattern.format(int(value) if pattern == "{:d}" else value)
    except (TypeError, ValueError):
        return html.escape(str(value))


def _metrics_table(run: RunDir) -> str:
    splits = {}
    for split in ("validate", "test", "train"):
        path = run.metrics / f"evaluate_{split}.json"
        if path.is_file():
            splits[split] = json.loads(path.read_text())
    if not splits:
        return "<p>No evaluation yet (run <code>brainvq evaluate</code>).</p>"
    head = "".join(f"<th>{html.escape(s)}</th>" for s in splits)
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_format(m.get(key), pattern)}</td>" for m in splits.values())
        + "</tr>"
        for key, label, pattern in METRIC_ROWS
        if not key.startswith("top_") or any(key in m for m in splits.values())  # two-level rows when present
    )
    note = (
        '<p class="sub">– : not computed (MS-SSIM needs images of 176 pixels a side or more; prior '
        "metrics need a trained prior). PSNR floors the MSE at 8-bit quantisation noise (at most 58.9 dB).</p>"
    )
    current = _current_hash(run)
    stale = [s for s, m in splits.items() if current and m.get("vqvae_hash") not in (None, current)]
    if stale:
        note += (
            f'<p class="sub"><b>Stale:</b> the metrics of {", ".join(stale)} were computed with another VQ-VAE '
            "checkpoint than the run's current one; run <code>brainvq evaluate</code> again.</p>"
        )
    return f"<table><tr><th>metric</th>{head}</tr>{rows}</table>{note}"


def _current_hash(run: RunDir) -> str | None:
    from brainvq.runs import file_hash, stage_checkpoint

    return file_hash(stage_checkpoint(run, "vqvae")) if run.has_stage("vqvae") else None


def _realism_figures(folder: Path) -> list[str]:
    parts = []
    for name, caption in (
        ("tissue_fractions.png", "Tissue fractions against slice index, real and generated"),
        ("memorisation_pairs.png", "The samples closest to a training slice"),
    ):
        if (folder / name).is_file():
            parts.append(
                f'<figure><img src="{_embed(folder / name)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
            )
    return parts


def _realism(run: RunDir) -> str:
    parts = []
    for path in sorted(run.metrics.glob("realism_*.json")):
        data = json.loads(path.read_text())
        sets = {"samples": data, **data.get("reference", {})}
        head = "".join(f"<th>{html.escape(k)}</th>" for k, _ in REALISM_KEYS)
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td>"
            + "".join(f"<td>{_format(values.get(k), pattern)}</td>" for k, pattern in REALISM_KEYS)
            + "</tr>"
            for name, values in sets.items()
        )
        parts.append(
            f"<p>Against the real <code>{html.escape(data['split'])}</code> slices of "
            f"<code>{html.escape(data['real'])}</code>, judge <code>{data['judge_hash']}</code>. "
            f"{html.escape(data['note'])}.</p><table><tr><th>set</th>{head}</tr>{rows}</table>"
        )
        suffix = path.stem[len(f"realism_{data['split']}") :]  # evaluate-samples' folder for these settings
        parts += _realism_figures(run.figures / f"realism{suffix}" if suffix else run.figures)
    return "".join(parts) or "<p>Not measured yet (run <code>brainvq evaluate-samples --run RUN</code>).</p>"


def _sampling(run: RunDir) -> str:
    path = run.metrics / "sampling.json"
    if not path.is_file():
        return "<p>No samples yet (run <code>brainvq sample</code>).</p>"
    data = json.loads(path.read_text())
    grid = Path(data["grid"])
    text = (
        f"<p>{data['n']} slices in {data['seconds']:.1f} s on {html.escape(data['device'])} "
        f"({data['sampler']} sampler: {data['sampling_seconds']:.1f} s sampling code maps of "
        f"{data['code_shape'][0]}x{data['code_shape'][1]}, {data['decoding_seconds']:.2f} s decoding; "
        f"seed {data['seed']}, temperature {data['temperature']}).</p>"
    )
    if data.get("redrawn_top_maps"):  # two levels: brainvq.sampling.background
        text += f"<p>{data['redrawn_top_maps']} top maps with no background around the head were drawn again.</p>"
    if grid.is_file():
        text += f'<figure><img src="{_embed(grid)}" alt="generated slices"><figcaption>Generated slices'
        text += " (titles give the slice index the prior was conditioned on)" if data.get("slices") else ""
        text += "</figcaption></figure>"
    return text


def write_report(run_root: str | Path) -> Path:
    """Write ``RUN/report.html`` and return its path."""
    run = RunDir(run_root)
    config_text = run.config.read_text() if run.config.is_file() else ""
    config = yaml.safe_load(config_text) if config_text else {}
    figures = "".join(
        f'<figure><img src="{_embed(run.figures / name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in FIGURES
        if (run.figures / name).is_file()
    )
    data_root = (config.get("data") or {}).get("root", "?")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>brainvq report: {html.escape(run.root.name)}</title>
<style>{STYLE}</style></head><body>
<h1>brainvq report</h1><p class="sub">run <code>{html.escape(str(run.root))}</code>,
data <code>{html.escape(str(data_root))}</code></p>
<h2>Metrics</h2>{_metrics_table(run)}
<h2>Generated slices</h2>{_sampling(run)}
<h2>How real are the samples</h2>{_realism(run)}
<h2>Training and reconstructions</h2>{figures or "<p>No figures yet.</p>"}
<h2>Configuration</h2><pre>{html.escape(config_text)}</pre>
<script>
window.addEventListener("load", function () {{
  var images = Array.from(document.images);
  var loaded = images.filter(function (img) {{ return img.complete && img.naturalWidth > 0; }});
  document.body.setAttribute("data-images-total", String(images.length));
  document.body.setAttribute("data-images-loaded", String(loaded.length));
  document.body.setAttribute("data-images-checked", "yes");
}});
</script>
</body></html>
"""
    atomic_write_text(run.report, page)
    return run.report
