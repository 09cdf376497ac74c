"""The embedded default dataset: objects made of parts, one class per arrangement.

Every class uses the same four parts (shape, colour, size, count); classes differ only in
where the parts sit relative to each other, so colour and part statistics carry no class
information and recognising a class needs the object's structure. Arrangements are drawn
from a seed and kept only if their scale-normalised distance matrix differs from every
other class's: equal distance matrices are exactly the rotations and mirror images, so no
class is a rotated or flipped copy of another. Each arrangement is also scaled to the same
radius and keeps its parts apart, so the object covers the same area in every class.

Four knobs make the task harder where the paper says LIO helps (each off by default, and off
draws no random number, so the default files stay the same): `min_shape_diff` (how different
two classes' arrangements must be), `siblings` (classes made from an earlier one by moving a
single part: fine-grained arrangements), `distractors` (full-size parts of the object's own
types, scattered where they never touch it: only the object's extent separates them) and
`scale_min`/`scale_max`/`tilt` (pose: size, and foreshortening along a random axis, on top of the
full-circle rotation every instance has).

Written in the CUB-200-2011 layout, masks in `segmentations/`, so the CUB reader reads it.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.config.data import SyntheticConfig
from pipeline.core.errors import DatasetError

# (shape, RGB) of the parts every object is built from.
PARTS = (("circle", (220, 60, 50)), ("square", (40, 170, 70)), ("triangle", (50, 90, 220)), ("bar", (230, 200, 40)))
RADIUS = 0.30  # object radius, as a fraction of the image side
PART = 0.085  # part half-size, as a fraction of the image side
MIN_GAP = 2.6  # minimum part-centre distance, in part half-sizes
MIN_SHAPE_DIFF = 0.35  # default minimum difference between two classes' normalised distance matrices
SIBLING_STEP = 0.35  # how far a sibling's moved part goes, at most, in object units (the object's radius is 1)
EXTENT = 1.5  # a part's circumscribed radius, in part half-sizes (the bar, the longest, reaches 1.47)
SUPERSAMPLE = 4


def _normalised(pts: np.ndarray) -> np.ndarray:
    pts = pts - pts.mean(axis=0)
    return pts / np.linalg.norm(pts, axis=1).max()


def _signature(pts: np.ndarray) -> np.ndarray | None:
    """The scale-normalised distance matrix, or None when two parts sit too close."""
    dist = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    if dist[np.triu_indices(len(PARTS), 1)].min() < MIN_GAP * PART / RADIUS:
        return None
    return dist / dist.mean()


def arrangements(
    num_classes: int, rng: np.random.Generator, min_shape_diff: float = MIN_SHAPE_DIFF, siblings: int = 0
) -> list[np.ndarray]:
    """`num_classes` part layouts [len(PARTS), 2] in object units, pairwise non-congruent: every two
    signatures differ by at least `min_shape_diff`. With `siblings`, each drawn arrangement is
    followed by that many made from it by moving one part (at most SIBLING_STEP), so classes come
    in families that differ in a single part's position."""
    chosen: list[np.ndarray] = []
    signatures: list[np.ndarray] = []

    def accept(pts: np.ndarray) -> bool:
        signature = _signature(pts)
        if signature is None or any(np.abs(signature - s).max() < min_shape_diff for s in signatures):
            return False
        chosen.append(pts)
        signatures.append(signature)
        return True

    for _ in range(100_000):
        if len(chosen) >= num_classes:
            return chosen[:num_classes]
        if not accept(_normalised(rng.uniform(-1, 1, size=(len(PARTS), 2)))):
            continue
        parent, family = chosen[-1], 0
        for _ in range(1000 * siblings):
            if family == siblings:
                break
            pts = parent.copy()
            pts[rng.integers(len(PARTS))] += rng.uniform(-SIBLING_STEP, SIBLING_STEP, size=2)
            family += accept(_normalised(pts))
    raise DatasetError(
        f"could not find {num_classes} arrangements of {len(PARTS)} parts at least {min_shape_diff} apart; "
        "use fewer classes or a smaller data.synthetic.min_shape_diff"
    )


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


@dataclass
class Plan:
    """Every random choice of one instance, drawn in the order the generator has always drawn
    them (so the files stay the same), apart from the drawing itself (the expensive part), which
    can then run in any process and still give the same pixels."""

    size: int
    background: np.ndarray
    noise: np.ndarray
    clutter: list[tuple[str, float, float, float, tuple]]  # shape, x, y, angle, RGBA
    parts: list[tuple[str, float, float, float, float, tuple]]  # shape, x, y, size, angle, RGBA
    distractors: list[tuple[str, float, float, float, float, tuple]] = field(default_factory=list)  # as parts


@dataclass(frozen=True)
class Pose:
    """How much one instance's pose varies (the random draws `plan` makes)."""

    scale_min: float = 0.85
    scale_max: float = 1.1
    tilt: float = 0.0  # foreshortening: one random axis shrinks by a factor in [1 - tilt, 1]
    distractors: int = 0

    @classmethod
    def of(cls, cfg: SyntheticConfig) -> Pose:
        return cls(cfg.scale_min, cfg.scale_max, cfg.tilt, cfg.distractors)


def plan(layout: np.ndarray, size: int, rng: np.random.Generator, pose: Pose = Pose()) -> Plan:
    """One instance's random rotation, scale, position, colour jitter and clutter."""
    big = size * SUPERSAMPLE
    background = rng.integers(90, 170, size=3)
    noise = rng.normal(0, 12, size=(big // 8, big // 8, 3))

    def jitter(rgb):
        return tuple(int(v) for v in np.clip(np.array(rgb) + rng.integers(-25, 26, size=3), 0, 255))

    clutter = []
    for _ in range(3):  # clutter: the same parts, smaller and faded, anywhere
        shape, rgb = PARTS[rng.integers(len(PARTS))]
        x, y = rng.uniform(0.05, 0.95, size=2) * big
        clutter.append((shape, x, y, rng.uniform(0, 2 * math.pi), jitter(rgb) + (120,)))
    angle = rng.uniform(0, 2 * math.pi)
    scale = rng.uniform(pose.scale_min, pose.scale_max)
    centre = big / 2 + rng.uniform(-0.08, 0.08, size=2) * big
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = centre + (layout @ rot.T @ _foreshortening(pose.tilt, rng).T) * RADIUS * scale * big
    parts = []
    for (shape, rgb), (x, y) in zip(PARTS, points):
        part_angle = angle + rng.normal(0, 0.15)
        parts.append((shape, x, y, PART * scale * big, part_angle, jitter(rgb) + (255,)))
    distractors: list[tuple[str, float, float, float, float, tuple]] = []
    reach = EXTENT * PART * scale * big  # every part, the object's and the distractors', fits a disc this wide
    for _ in range(pose.distractors):
        for _ in range(100):  # a place where it touches neither the object nor another distractor
            x, y = rng.uniform(reach, big - reach, size=2)
            if all(math.hypot(x - px, y - py) > 2 * reach + 2 for _, px, py, *_ in parts + distractors):
                shape, rgb = PARTS[rng.integers(len(PARTS))]
                distractors.append((shape, x, y, PART * scale * big, rng.uniform(0, 2 * math.pi), jitter(rgb) + (255,)))
                break
    return Plan(size, background, noise, clutter, parts, distractors)


def _foreshortening(tilt: float, rng: np.random.Generator) -> np.ndarray:
    """A squeeze by a factor in [1 - tilt, 1] along a random axis (a view from up to acos(1 - tilt)
    off the object's normal); the identity, with no random draw, when tilt is 0."""
    if tilt == 0:
        return np.eye(2)
    axis, squeeze = rng.uniform(0, math.pi), rng.uniform(1 - tilt, 1)
    c, s = math.cos(axis), math.sin(axis)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([squeeze, 1.0]) @ rot.T


def draw(p: Plan) -> tuple[Image.Image, Image.Image]:
    """The image and its object mask, at 4x then downsampled."""
    big = p.size * SUPERSAMPLE
    base = np.clip(p.background + np.kron(p.noise, np.ones((8, 8, 1))), 0, 255).astype(np.uint8)
    image = Image.fromarray(base, "RGB")
    mask = Image.new("L", (big, big), 0)
    pen, mask_pen = ImageDraw.Draw(image, "RGBA"), ImageDraw.Draw(mask)
    for shape, x, y, angle, fill in p.clutter:
        _draw_part(pen, shape, x, y, 0.6 * PART * big, angle, fill)
    for shape, x, y, part_size, angle, fill in p.distractors:  # on the image only: not the object
        _draw_part(pen, shape, x, y, part_size, angle, fill)
    for shape, x, y, part_size, angle, fill in p.parts:
        _draw_part(pen, shape, x, y, part_size, angle, fill)
        _draw_part(mask_pen, shape, x, y, part_size, angle, 255)
    return (
        image.resize((p.size, p.size), Image.Resampling.LANCZOS),
        mask.resize((p.size, p.size), Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0),
    )


def _write(job: tuple[Plan, Path, Path]) -> tuple[int, int, int, int] | None:
    """Draw one planned instance and save it; its mask's bounding box (None: empty mask)."""
    p, image_path, mask_path = job
    image, mask = draw(p)
    image.save(image_path)
    mask.save(mask_path)
    return mask.getbbox()


def generate(root: Path, cfg: SyntheticConfig, seed: int, workers: int | None = None) -> None:
    """Write the dataset under `root` in the CUB-200-2011 layout.

    The first round(images_per_class * test_fraction) images of each class are test images. Each
    extra set comes after all the others from its own random stream, so it changes nothing before it:
    `extra_test_per_class` test images, `extra_gate_per_class` gate images (split flag 2) and
    `extra_select_per_class` images that choose the INT8 settings (split flag 3). With `layout_seed`
    set, the arrangements come from that seed alone (the first
    `skip_classes` of them are left out), so pre-training and study data can share one
    stream of arrangements and be disjoint by construction.

    The random choices are drawn in one process, in order; the drawing and PNG encoding run
    on `workers` processes (default: every core), so the files are the same for any count.
    """
    rng = np.random.default_rng(seed)
    layout_rng = np.random.default_rng(cfg.layout_seed) if cfg.layout_seed >= 0 else rng
    layouts = arrangements(cfg.skip_classes + cfg.classes, layout_rng, cfg.min_shape_diff, cfg.siblings)
    layouts = layouts[cfg.skip_classes :]
    pose = Pose.of(cfg)
    n_test = round(cfg.images_per_class * cfg.test_fraction)
    if cfg.images_per_class < 2 or not 0 < n_test < cfg.images_per_class:
        raise DatasetError("data.synthetic: images_per_class and test_fraction must leave train and test images")
    names = [f"{c:03d}.arrangement_{c:02d}" for c in range(1, len(layouts) + 1)]
    for name in names:
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "segmentations" / name).mkdir(parents=True, exist_ok=True)
    # (class, index, split flag) in the order the random streams are read: every class's own images,
    # then the extra test images, then the gate images, each from its own stream (the images above
    # do not depend on them)
    ids = range(1, len(layouts) + 1)
    order = [(c, i, 0 if i < n_test else 1) for c in ids for i in range(cfg.images_per_class)]
    first_gate = cfg.images_per_class + cfg.extra_test_per_class
    order += [(c, i, 0) for c in ids for i in range(cfg.images_per_class, first_gate)]
    first_select = first_gate + cfg.extra_gate_per_class
    order += [(c, i, 2) for c in ids for i in range(first_gate, first_select)]
    order += [(c, i, 3) for c in ids for i in range(first_select, first_select + cfg.extra_select_per_class)]
    extra, gate, select = (np.random.default_rng([seed, k]) for k in (1, 2, 3))

    rels = [f"{names[c - 1]}/arrangement_{c:02d}_{i:04d}.png" for c, i, _ in order]

    def jobs() -> Iterator[tuple[Plan, Path, Path]]:
        for (c, i, _), rel in zip(order, rels):  # the plans are drawn here, in order; the workers only draw
            stream = rng if i < cfg.images_per_class else extra if i < first_gate else gate if i < first_select else select
            yield plan(layouts[c - 1], cfg.image_size, stream, pose), root / "images" / rel, root / "segmentations" / rel

    boxes = _run(jobs(), len(order), workers)
    write_lists(root, names, order, rels, boxes, cfg.image_size)


def write_lists(root: Path, names: list[str], order: list, rels: list[str], boxes: list, size: int) -> None:
    """CUB-200-2011's text files: images, classes, labels, splits, bounding boxes (the whole image when
    a box is missing)."""
    images, labels, splits, bounds = [], [], [], []
    for k, ((c, _, flag), rel, box) in enumerate(zip(order, rels, boxes), start=1):
        x0, y0, x1, y1 = box or (0, 0, size, size)
        images.append(f"{k} {rel}")
        labels.append(f"{k} {c}")
        splits.append(f"{k} {flag}")
        bounds.append(f"{k} {x0}.0 {y0}.0 {x1 - x0}.0 {y1 - y0}.0")
    classes = [f"{c} {name}" for c, name in enumerate(names, start=1)]
    files = ("images", "classes", "image_class_labels", "train_test_split", "bounding_boxes")
    for fname, lines in zip(files, (images, classes, labels, splits, bounds)):
        (root / f"{fname}.txt").write_text("\n".join(lines) + "\n")


def _run(jobs: Iterator[tuple[Plan, Path, Path]], total: int, workers: int | None) -> list:
    """`_write` over the jobs on a process pool, in order, a bounded number of plans in flight."""
    workers = workers or len(os.sched_getaffinity(0))
    bar = tqdm(total=total, desc="drawing the synthetic dataset", unit="img", leave=False, disable=total < 200)
    out: list[tuple[int, int, int, int] | None] = []
    with bar, ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        window = 8 * workers
        while chunk := list(itertools.islice(jobs, window)):
            out += pool.map(_write, chunk) if pool else map(_write, chunk)
            bar.update(len(chunk))
    return out
