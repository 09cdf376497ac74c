"""docs/img/knobs.png: a few images of each knob of the synthetic generator, one row per setting.

    python tools/knob_figure.py [--out docs/img/knobs.png]

Row by row: the default; `siblings: 1` (each pair of columns: two classes that differ in one part's
position); `distractors: 2`; `tilt: 0.3` with `scale_min: 0.7`; and the study's structure preset,
all of them at once. Each tile is drawn at 64 px, as the study trains, and shown at 2x.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.config.data import SyntheticConfig
from pipeline.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
BASE = SyntheticConfig(classes=4, images_per_class=4, image_size=64)
ROWS: dict[str, dict] = {
    "default": {},
    "siblings 1": {"siblings": 1, "min_shape_diff": 0.25},
    "distractors 2": {"distractors": 2},
    "tilt 0.3, scale 0.7-1.1": {"tilt": 0.3, "scale_min": 0.7},
    "structure preset": {"siblings": 1, "min_shape_diff": 0.25, "distractors": 2, "tilt": 0.2, "scale_min": 0.75},
}
PER_CLASS = 2  # images shown per class: 4 classes x 2 = 8 tiles a row
LABEL = 150  # pixels left of each row for its name


def row(knobs: dict, seed: int = 1) -> list[Image.Image]:
    """PER_CLASS images of each of BASE.classes classes, class-major (siblings sit side by side)."""
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.generate(Path(tmp), replace(BASE, **knobs), seed=seed, workers=1)
        rels = (Path(tmp) / "images.txt").read_text().split()[1::2]
        by_class: dict[str, list[str]] = {}
        for rel in rels:
            by_class.setdefault(rel.split("/")[0], []).append(rel)
        return [
            Image.open(Path(tmp) / "images" / rel).convert("RGB").copy()
            for rels_of_class in by_class.values()
            for rel in rels_of_class[:PER_CLASS]
        ]


def figure() -> Image.Image:
    scale = 2
    tile = BASE.image_size * scale
    rows = {name: row(knobs) for name, knobs in ROWS.items()}
    width = LABEL + tile * max(len(r) for r in rows.values())
    canvas = Image.new("RGB", (width, tile * len(rows)), "white")
    pen = ImageDraw.Draw(canvas)
    for i, (name, images) in enumerate(rows.items()):
        pen.text((6, i * tile + tile // 2 - 6), name, fill="black")
        for j, image in enumerate(images):
            canvas.paste(image.resize((tile, tile), Image.Resampling.NEAREST), (LABEL + j * tile, i * tile))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/knobs.png")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = figure()
    image.quantize(256).save(args.out, optimize=True)  # a palette: a fifth of the bytes, the same picture
    print(f"wrote {args.out} ({image.width}x{image.height} pixels, {len(ROWS)} rows)")


if __name__ == "__main__":
    main()
