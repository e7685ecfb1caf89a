"""The README's comparison figures: sample grids of several runs side by side, each with a label.

    python benchmarks/side_by_side.py docs/figures/OUT.png \\
        "runs/oasis-cpu-1level/samples/grid.png=one level (oasis-cpu-1level)" \\
        "runs/oasis-cpu/samples/grid.png=two levels (oasis-cpu)"

Each argument after the output is ``GRID=LABEL``: a ``grid.png`` that ``brainvq sample`` or the
pipeline's sample stage wrote, and the text printed above it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LABEL_HEIGHT = 30


def side_by_side(grids: list[tuple[Path, str]], out: Path) -> Path:
    """Paste the grids left to right on white, each under its label; write ``out`` as PNG."""
    images = [Image.open(path).convert("L") for path, _ in grids]
    size = (sum(i.width for i in images), max(i.height for i in images) + LABEL_HEIGHT)
    canvas = Image.new("L", size, 255)  # grayscale: the grids are, and the file is half the size
    draw = ImageDraw.Draw(canvas)
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.truetype("DejaVuSans.ttf", 18)
    except OSError:
        font = ImageFont.load_default()
    left = 0
    for image, (_, label) in zip(images, grids, strict=True):
        canvas.paste(image, (left, LABEL_HEIGHT))
        draw.text((left + 20, 5), label, fill=0, font=font)
        left += image.width
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("grids", nargs="+", metavar="GRID=LABEL")
    args = parser.parse_args()
    grids = []
    for item in args.grids:
        path, _, label = item.partition("=")
        if not Path(path).is_file():
            parser.error(f"{path}: no such grid")
        grids.append((Path(path), label or Path(path).parent.parent.name))
    print(side_by_side(grids, args.out))


if __name__ == "__main__":
    main()
