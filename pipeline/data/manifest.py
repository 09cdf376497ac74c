"""The prepared dataset's format, read by every later stage: `manifest.csv` (one row per
image: path, label, split, bbox, mask, crop_bottom) and `classes.json` (index -> name)."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.paths import require


@dataclass
class Record:
    """One image: what a reader finds, and (read back from manifest.csv) what every later stage gets."""

    path: Path
    label: int
    split: str  # train | test from a reader; train | val | test in the manifest
    bbox: tuple[float, float, float, float] | None = None
    mask: Path | None = None
    crop_bottom: int = 0
    bytes: int = 0  # the file's size when prepared (0: unknown); training refuses a changed file


MANIFEST = "manifest.csv"
CLASSES = "classes.json"
COLUMNS = ("path", "label", "split", "bbox", "mask", "crop_bottom", "bytes")


def read_manifest(prepared: Path) -> tuple[list[Record], list[str]]:
    """Rows as Records with paths under `prepared`, and the class names; clear errors if the stage did not run."""
    manifest, classes = require(Path(prepared) / MANIFEST, "prepare"), require(Path(prepared) / CLASSES, "prepare")
    names_by_index = json.loads(classes.read_text())
    names = [names_by_index[str(i)] for i in range(len(names_by_index))]
    rows = []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            box = [float(v) for v in row["bbox"].split()]
            rows.append(
                Record(
                    path=Path(prepared) / row["path"],
                    label=int(row["label"]),
                    split=row["split"],
                    bbox=(box[0], box[1], box[2], box[3]) if len(box) == 4 else None,
                    mask=Path(prepared) / row["mask"] if row["mask"] else None,
                    crop_bottom=int(row["crop_bottom"] or 0),
                    bytes=int(row.get("bytes") or 0),  # 0: unknown (a manifest from before the column)
                )
            )
    return rows, names
