"""The held-out check of ``brainvq conform`` on OASIS itself, and its speed.

    python benchmarks/conform_oasis.py --data ../shared/oasis [--split validate] [--transform rigid] [--n 35]

Each subject's 32 slices are stacked into a volume in the layout's geometry (with 8 empty slices above
and below, as a scan has more than the slab), moved by a random rigid transform (rotations up to 10
degrees about each axis, shifts up to 10 mm: the volume's affine is changed, its voxels are not
resampled), stored in another orientation (axes permuted and flipped: I, A, L), given a gamma of 0.8
and int16 intensities, then conformed back to the template of the data's train split. Prints, per
subject, the median and minimum per-slice correlation with the subject's own PNGs, the correlation
with the template, the coverage and the seconds, then the distribution over subjects.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from brainvq.conform.geometry import reorient, stack_volume
from brainvq.conform.scans import ConformOptions, conform_scan
from brainvq.conform.template import template_of

PAD = 8


def rotation(axis: int, radians: float) -> np.ndarray:
    c, s = np.cos(radians), np.sin(radians)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i] = m[j, j] = c
    m[i, j], m[j, i] = -s, s
    return m


def moved_volume(stack: np.ndarray, rng: np.random.Generator, path: Path) -> None:
    """The stack as a NIfTI volume, moved, reoriented and given another contrast (see the module doc)."""
    move = np.eye(4)
    move[:3, :3] = rotation(0, np.deg2rad(rng.uniform(-10, 10))) @ rotation(1, np.deg2rad(rng.uniform(-10, 10)))
    move[:3, :3] = move[:3, :3] @ rotation(2, np.deg2rad(rng.uniform(-10, 10)))
    move[:3, 3] = rng.uniform(-10, 10, 3)
    volume, affine = stack_volume(stack, pad=PAD, move=move)
    volume, affine = reorient(volume, affine, (2, 0, 1), (True, False, False))
    nib.save(nib.Nifti1Image((volume ** (1 / 0.8) * 1000).astype(np.int16), affine), str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="validate")
    parser.add_argument("--transform", default="rigid", choices=("rigid", "affine"))
    parser.add_argument("--n", type=int, default=0, help="subjects (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the per-subject results here")
    args = parser.parse_args()
    template = template_of(args.data)
    folder = args.data / f"keras_png_slices_{args.split}"
    subjects = sorted({int(p.name.split("_")[1]) for p in folder.glob("case_*_slice_*.nii.png")})
    subjects = subjects[: args.n] if args.n else subjects
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for subject in subjects:
            names = [folder / f"case_{subject:03d}_slice_{k}.nii.png" for k in range(template.mean.shape[0])]
            stack = np.stack([np.asarray(Image.open(n), dtype=np.float32) / 255 for n in names])
            path = Path(tmp) / f"sub-{subject:03d}.nii.gz"
            moved_volume(stack, rng, path)
            result = conform_scan(path, template, ConformOptions(transform=args.transform))
            per_slice = [
                float(np.corrcoef(result.slices[k].ravel(), stack[k].ravel())[0, 1]) for k in range(len(stack))
            ]
            row = {"subject": subject, "median": float(np.median(per_slice)), "min": float(np.min(per_slice)),
                   "template_correlation": result.record["correlation"], "coverage": result.record["coverage"],
                   "metric": result.record["metric"], "seconds": result.record["seconds"], "ok": result.record["ok"]}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    medians = np.array([r["median"] for r in rows])
    print(f"\n{len(rows)} subjects, transform {args.transform}: median per-slice correlation, over subjects: "
          f"median {np.median(medians):.4f}, 10th percentile {np.percentile(medians, 10):.4f}, min {medians.min():.4f}; "
          f"subjects at >= 0.95: {(medians >= 0.95).sum()}; template correlation min "
          f"{min(r['template_correlation'] for r in rows):.3f}; seconds per volume "
          f"{np.mean([r['seconds'] for r in rows]):.1f} (registration)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
