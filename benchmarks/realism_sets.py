"""Control sets for `brainvq evaluate-samples`: copies of training slices (must be flagged as memorised)
and blurred held-out slices (must score clearly worse than real ones).

    python benchmarks/realism_sets.py --data ../shared/oasis --out runs/realism --n 256

writes OUT/train_copies/ (N random train slices, names kept) and OUT/blurred/ (N random validate
slices blurred with a Gaussian of sigma 2 pixels, names kept, so slice indices stay known).

    python benchmarks/realism_sets.py --data ../shared/oasis --out runs/realism --n 256 --slice-range 5:26

writes only OUT/train_copies_5-26/: N random train slices with slice index 5..26. Scored against
a split with every slice, they show what a mix of slices unlike the real one costs by itself.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from brainvq.data.layout import IMAGE_RE, image_dir


def copy_some(paths: list[Path], folder: Path, n: int, rng: np.random.Generator) -> None:
    """Copy ``n`` of ``paths`` (random, without replacement, names kept) into ``folder``."""
    for i in rng.choice(len(paths), size=min(n, len(paths)), replace=False):
        shutil.copy(paths[i], folder / paths[i].name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--split", default="validate")
    parser.add_argument("--sigma", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slice-range", help="A:B: only train copies with slice index A..B")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    train = sorted(image_dir(args.data, "train").glob("case_*.png"))
    if args.slice_range:
        first, last = (int(v) for v in args.slice_range.split(":"))
        train = [p for p in train if first <= int(IMAGE_RE.match(p.name).group(2)) <= last]  # type: ignore[union-attr]
        folder = args.out / f"train_copies_{first}-{last}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        copy_some(train, folder, args.n, rng)
        print(f"wrote {len(list(folder.iterdir()))} train copies with slices {first}..{last} to {folder}")
        return
    held_out = sorted(image_dir(args.data, args.split).glob("case_*.png"))
    copies, blurred = args.out / "train_copies", args.out / "blurred"
    for folder in (copies, blurred):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    copy_some(train, copies, args.n, rng)
    for i in rng.choice(len(held_out), size=min(args.n, len(held_out)), replace=False):
        with Image.open(held_out[i]) as image:
            image.convert("L").filter(ImageFilter.GaussianBlur(args.sigma)).save(blurred / held_out[i].name)
    print(
        f"wrote {len(list(copies.iterdir()))} train copies to {copies} and {len(list(blurred.iterdir()))} blurred slices to {blurred}"
    )


if __name__ == "__main__":
    main()
