"""The prepare stage: read a dataset, check every image, carve a validation split, and
write `manifest.csv` and `classes.json` (whole folder swapped in atomically)."""
from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.config.data import PrepareParams
from pipeline.core.errors import DatasetError
from pipeline.core.io import atomic_dir, exclusive, write_json
from pipeline.data import synthetic
from pipeline.data.dataset import ImageError, load_image
from pipeline.data.manifest import CLASSES, COLUMNS, MANIFEST, Record
from pipeline.data.readers import read_dataset, validate

BAD_IMAGES = "bad_images.txt"


def check_image(path: Path) -> str | None:
    """None if the image decodes, else why not."""
    try:
        load_image(path)
    except ImageError as e:
        return str(e)
    return None


def carve_val(records: list[Record], fraction: float, seed: int) -> list[str]:
    """Splits per record: each class's training images lose `fraction` to `val` (at least
    one while the class keeps one for training), chosen with a seeded shuffle."""
    splits = [r.split for r in records]
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.split == "train":
            by_class[r.label].append(i)
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):
        idx = by_class[label]
        n_val = min(len(idx) - 1, max(1, round(len(idx) * fraction)))
        for i in rng.permutation(idx)[:n_val]:
            splits[i] = "val"
    return splits


def _stored(path: Path, folder: Path) -> str:
    """Paths inside the output folder are stored relative to it (so it can move), others absolute."""
    path = path.resolve()
    try:
        return path.relative_to(folder.resolve()).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class Prepared:
    """What `prepare` wrote, for the log: classes, images kept and skipped, images per split."""

    classes: int
    images: int
    skipped: int
    splits: dict[str, int]

    def __str__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.splits.items())
        return f"{self.classes} classes, {self.images} images ({counts}), {self.skipped} skipped"


def prepare(cfg: PrepareParams, out: Path) -> Prepared:
    """Build `out` (e.g. data/prepared); returns what it wrote."""
    data = cfg.data
    with exclusive(out, "`lio prepare`"), atomic_dir(out) as tmp:
        root = Path(data.root)
        if data.format == "synthetic":
            synthetic.generate(tmp / "synthetic", data.synthetic, cfg.seed)
            root = tmp / "synthetic"
        records, names = read_dataset(data.format, root)

        bad = []
        for r in tqdm(records, desc="checking images", unit="img", mininterval=2):
            reason = check_image(r.path)
            if reason:
                bad.append((r, reason))
        if bad:
            listing = "\n".join(why for _, why in bad)
            if data.on_bad_image == "fail":
                raise DatasetError(
                    f"{data.format}: {len(bad)} image(s) cannot be decoded:\n{listing}\n"
                    "fix or remove them, or set data.on_bad_image: skip in params.yaml"
                )
            (tmp / BAD_IMAGES).write_text(listing + "\n")
            skipped = {id(r) for r, _ in bad}
            records = [r for r in records if id(r) not in skipped]
            validate(records, names, data.format)

        splits = carve_val(records, data.val_fraction, cfg.seed)
        with open(tmp / MANIFEST, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for r, split in zip(records, splits):
                mask = "" if r.mask is None else _stored(r.mask, tmp)
                bbox = "" if r.bbox is None else " ".join(f"{v:g}" for v in r.bbox)
                writer.writerow([_stored(r.path, tmp), r.label, split, bbox, mask, r.crop_bottom, r.path.stat().st_size])
        write_json(tmp / CLASSES, {str(i): n for i, n in enumerate(names)})
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    counts |= {s: splits.count(s) for s in ("gate", "select") if s in splits}  # the embedded set's held-out images
    return Prepared(len(names), len(records), len(bad), counts)
