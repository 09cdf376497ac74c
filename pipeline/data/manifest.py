"""The prepared dataset's format, read by every later stage: `manifest.csv` (one row per
image: path, label, split, bbox, mask, crop_bottom) and `classes.json` (index -> name)."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from pipeline.paths import require

MANIFEST = "manifest.csv"
CLASSES = "classes.json"
COLUMNS = ("path", "label", "split", "bbox", "mask", "crop_bottom", "bytes")


def read_manifest(prepared: Path) -> tuple[list[dict], list[str]]:
    """Rows with absolute paths, and the class names; clear errors if the stage did not run."""
    manifest, classes = require(Path(prepared) / MANIFEST, "prepare"), require(Path(prepared) / CLASSES, "prepare")
    names_by_index = json.loads(classes.read_text())
    names = [names_by_index[str(i)] for i in range(len(names_by_index))]
    rows = []
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            row["path"] = os.path.join(prepared, row["path"])
            row["mask"] = os.path.join(prepared, row["mask"]) if row["mask"] else ""
            row["label"] = int(row["label"])
            row["crop_bottom"] = int(row["crop_bottom"] or 0)
            row["bytes"] = int(row.get("bytes") or 0)  # 0: unknown (a manifest from before the column)
            rows.append(row)
    return rows, names
