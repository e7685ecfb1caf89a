"""A real volume from another dataset, conformed to OASIS: the MNI152 2009a T1 template that nilearn's
wheel ships (1 mm; nilearn's copy is brain only, no skull), against OASIS itself.

    python benchmarks/conform_foreign.py --data ../shared/oasis [--transform rigid] [--figure docs/figures/conform_mni152.png]

Prints, per slice index, the correlation with the OASIS template inside its brain of the conformed MNI152
(``--rim keep`` and ``--rim template``), and, for
scale, OASIS validate subjects' own slices (the mean over subjects: what a scan of OASIS's kind reaches).
Also the seconds per volume. Needs the dev extra ``nilearn`` (only its data files are read).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
from PIL import Image

from brainvq.conform.scans import ConformOptions, conform_scan
from brainvq.conform.template import template_of


def nilearn_data() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs nilearn (pip install nilearn): its wheel ships the MNI152 template")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.corrcoef(a[where], b[where])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"))
    args = parser.parse_args()
    template = template_of(args.data)
    brain = template.brain_mask()
    data = nilearn_data()
    path = data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    results = {}
    for name, rim in (("MNI152, --rim keep", "keep"), ("MNI152, --rim template", "template")):
        started = time.perf_counter()
        result = conform_scan(path, template, ConformOptions(rim=rim, transform=args.transform))
        results[name] = result
        print(f"{name}: {time.perf_counter() - started:.1f} s in all (registration {result.record['seconds']:.1f} s), "
              f"ok {result.record['ok']} {result.record['problem']}, mean correlation {result.record['correlation']:.3f}")  # fmt: skip
    folder = args.data / "keras_png_slices_validate"
    subjects = sorted({int(p.name.split("_")[1]) for p in folder.glob("case_*_slice_*.nii.png")})
    oasis = np.zeros((len(subjects), len(brain)))
    for i, subject in enumerate(subjects):
        for k in range(len(brain)):
            image = (
                np.asarray(Image.open(folder / f"case_{subject:03d}_slice_{k}.nii.png"), dtype=np.float32) / 255
            )
            oasis[i, k] = correlation(image, template.mean[k], brain[k])
    print("\nslice " + "".join(f"{n[:28]:>30s}" for n in results) + f"{'OASIS validate (mean, min)':>30s}")
    for k in range(len(brain)):
        cells = "".join(f"{r.record['correlation_per_slice'][k]:30.3f}" for r in results.values())
        print(f"{k:5d} {cells}{oasis[:, k].mean():22.3f} ({oasis[:, k].min():.3f})")
    print(
        "mean  " + "".join(f"{r.record['correlation']:30.3f}" for r in results.values()) + f"{oasis.mean():22.3f}"
    )
    if args.figure:
        figure(
            template.mean,
            results["MNI152, --rim keep"].slices,
            results["MNI152, --rim template"].slices,
            args.figure,
        )


def figure(template: np.ndarray, conformed: np.ndarray, stripped: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = list(range(0, len(template), 4))
    fig, axes = plt.subplots(3, len(picks), figsize=(1.6 * len(picks), 5.2))
    for row, (stack, label) in enumerate(((template, "OASIS template"), (conformed, "MNI152 conformed"),
                                          (stripped, "... --rim template"))):  # fmt: skip
        for column, k in enumerate(picks):
            axes[row, column].imshow(stack[k], cmap="gray", vmin=0, vmax=1)
            axes[row, column].set_xticks([])
            axes[row, column].set_yticks([])
            if row == 0:
                axes[row, column].set_title(f"slice {k}", fontsize=8)
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
