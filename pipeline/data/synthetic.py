"""The embedded default dataset: objects made of parts, one class per arrangement.

Every class uses the same four parts (shape, colour, size, count); classes differ only in
where the parts sit relative to each other, so colour and part statistics carry no class
information and recognising a class needs the object's structure. Arrangements are drawn
from a seed and kept only if their scale-normalised distance matrix differs from every
other class's: equal distance matrices are exactly the rotations and mirror images, so no
class is a rotated or flipped copy of another. Each arrangement is also scaled to the same
radius and keeps its parts apart, so the object covers the same area in every class.

Written in the CUB-200-2011 layout, masks in `segmentations/`, so the CUB reader reads it.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.config import SyntheticConfig
from pipeline.data.readers import DatasetError

# (shape, RGB) of the parts every object is built from.
PARTS = (("circle", (220, 60, 50)), ("square", (40, 170, 70)), ("triangle", (50, 90, 220)), ("bar", (230, 200, 40)))
RADIUS = 0.30  # object radius, as a fraction of the image side
PART = 0.085  # part half-size, as a fraction of the image side
MIN_GAP = 2.6  # minimum part-centre distance, in part half-sizes
MIN_SHAPE_DIFF = 0.35  # minimum difference between two classes' normalised distance matrices
SUPERSAMPLE = 4


def arrangements(num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`num_classes` part layouts [len(PARTS), 2] in object units, pairwise non-congruent."""
    chosen: list[np.ndarray] = []
    signatures: list[np.ndarray] = []
    min_gap = MIN_GAP * PART / RADIUS
    for _ in range(100_000):
        if len(chosen) == num_classes:
            return chosen
        pts = rng.uniform(-1, 1, size=(len(PARTS), 2))
        pts -= pts.mean(axis=0)
        pts /= np.linalg.norm(pts, axis=1).max()
        dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        if dist[np.triu_indices(len(PARTS), 1)].min() < min_gap:
            continue
        signature = dist / dist.mean()
        if all(np.abs(signature - s).max() >= MIN_SHAPE_DIFF for s in signatures):
            chosen.append(pts)
            signatures.append(signature)
    raise DatasetError(f"could not find {num_classes} distinct arrangements of {len(PARTS)} parts; use fewer classes")


def _part_polygon(shape: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    shapes: dict[str, list[tuple[float, float]]] = {
        "square": [(-1, -1), (1, -1), (1, 1), (-1, 1)],
        "triangle": [(0, -1.2), (1.1, 0.9), (-1.1, 0.9)],
        "bar": [(-1.4, -0.45), (1.4, -0.45), (1.4, 0.45), (-1.4, 0.45)],
    }
    corners = shapes[shape]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + size * (x * c - y * s), cy + size * (x * s + y * c)) for x, y in corners]


def _draw_part(draw: ImageDraw.ImageDraw, shape: str, cx, cy, size, angle, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - size, cy - size, cx + size, cy + size], fill=fill)
    else:
        draw.polygon(_part_polygon(shape, cx, cy, size, angle), fill=fill)


def render(layout: np.ndarray, size: int, rng: np.random.Generator) -> tuple[Image.Image, Image.Image]:
    """One instance: random rotation, scale, position, colour jitter and clutter."""
    big = size * SUPERSAMPLE
    background = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 12, size=(big // 8, big // 8, 3))
    base = np.clip(background + np.kron(noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    mask = Image.new("L", (big, big), 0)
    draw, mask_draw = ImageDraw.Draw(image, "RGBA"), ImageDraw.Draw(mask)

    def jitter(rgb):
        return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-25, 26, size=3), 0, 255))

    for _ in range(3):  # clutter: the same parts, smaller and faded, anywhere
        shape, rgb = PARTS[rng.integers(len(PARTS))]
        x, y = rng.uniform(0.05, 0.95, size=2) * big
        _draw_part(draw, shape, x, y, 0.6 * PART * big, rng.uniform(0, 2 * math.pi), jitter(rgb) + (120,))

    angle = rng.uniform(0, 2 * math.pi)
    scale = rng.uniform(0.85, 1.1)
    centre = big / 2 + rng.uniform(-0.08, 0.08, size=2) * big
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = centre + (layout @ rot.T) * RADIUS * scale * big
    for (shape, rgb), (x, y) in zip(PARTS, points):
        part_angle = angle + rng.normal(0, 0.15)
        _draw_part(draw, shape, x, y, PART * scale * big, part_angle, jitter(rgb) + (255,))
        _draw_part(mask_draw, shape, x, y, PART * scale * big, part_angle, 255)
    return (
        image.resize((size, size), Image.Resampling.LANCZOS),
        mask.resize((size, size), Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0),
    )


def generate(root: Path, cfg: SyntheticConfig, seed: int) -> None:
    """Write the dataset under `root` in the CUB-200-2011 layout.

    The first round(images_per_class * test_fraction) images of each class are test images.
    `extra_test_per_class` more test images per class come after all the others, from their
    own random stream, so a larger test split leaves the training and validation images
    unchanged. With `layout_seed` set, the arrangements come from that seed alone (the first
    `skip_classes` of them are left out), so pre-training and study data can share one
    stream of arrangements and be disjoint by construction.
    """
    rng = np.random.default_rng(seed)
    if cfg.layout_seed >= 0:
        layouts = arrangements(cfg.skip_classes + cfg.classes, np.random.default_rng(cfg.layout_seed))
    else:
        layouts = arrangements(cfg.skip_classes + cfg.classes, rng)
    layouts = layouts[cfg.skip_classes :]
    n_test = round(cfg.images_per_class * cfg.test_fraction)
    if cfg.images_per_class < 2 or not 0 < n_test < cfg.images_per_class:
        raise DatasetError("data.synthetic: images_per_class and test_fraction must leave train and test images")
    images: list[str] = []
    labels: list[str] = []
    splits: list[str] = []
    boxes: list[str] = []
    classes: list[str] = []

    def add(c: int, i: int, layout: np.ndarray, is_test: bool, stream: np.random.Generator) -> None:
        name = f"{c:03d}.arrangement_{c:02d}"
        image, mask = render(layout, cfg.image_size, stream)
        rel = f"{name}/arrangement_{c:02d}_{i:04d}.png"
        image.save(root / "images" / rel)
        mask.save(root / "segmentations" / rel)
        x0, y0, x1, y1 = mask.getbbox() or (0, 0, cfg.image_size, cfg.image_size)
        k = len(images) + 1
        images.append(f"{k} {rel}")
        labels.append(f"{k} {c}")
        splits.append(f"{k} {int(not is_test)}")
        boxes.append(f"{k} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0")

    for c, layout in enumerate(layouts, start=1):
        name = f"{c:03d}.arrangement_{c:02d}"
        classes.append(f"{c} {name}")
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "segmentations" / name).mkdir(parents=True, exist_ok=True)
        for i in range(cfg.images_per_class):
            add(c, i, layout, i < n_test, rng)
    extra = np.random.default_rng([seed, 1])  # its own stream: the images above do not depend on it
    for c, layout in enumerate(layouts, start=1):
        for i in range(cfg.images_per_class, cfg.images_per_class + cfg.extra_test_per_class):
            add(c, i, layout, True, extra)
    for fname, lines in [
        ("images.txt", images),
        ("classes.txt", classes),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", splits),
        ("bounding_boxes.txt", boxes),
    ]:
        (root / fname).write_text("\n".join(lines) + "\n")
