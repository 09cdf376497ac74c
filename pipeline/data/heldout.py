"""The images the export decides on, chosen here and decoded once: which images gate a variant,
which choose the INT8 settings before the gate, which calibrate, and the test images reported beside.

- gate: every image training never saw and that carries a label: the validation split, plus the
  embedded set's held-out gate images (its third stream);
- select: the embedded set's held-out selection images (its fourth stream), never a gate image;
  else the training images calibration left (optimistic: the model fits them), else all of them;
- calibration: `calib_images` training images in a seeded order;
- test: the test split, reported only, never deciding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from pipeline.data.dataset import stack_images
from pipeline.data.manifest import Record


@dataclass(frozen=True)
class Images:
    """Decoded, preprocessed float32 NCHW images with their labels."""

    pixels: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class HeldOut:
    """Which rows gate, select, calibrate and test (cheap: nothing decoded yet)."""

    test: list[Record]
    gate: list[Record]
    select: list[Record]
    calibration: list[Record]
    train: list[Record]
    gate_source: str  # e.g. "the validation split (90 images) with 420 held-out gate images"
    select_source: str  # e.g. "504 held-out selection images"

    @classmethod
    def of(cls, rows: list[Record], calib_images: int, seed: int) -> HeldOut:
        split = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test", "gate", "select")}
        gate = split["val"] + split["gate"]
        gate_source = f"the validation split ({len(split['val'])} images)" + (
            f" with {len(split['gate'])} held-out gate images" if split["gate"] else ""
        )
        order = np.random.default_rng(seed).permutation(len(split["train"]))
        train = [split["train"][i] for i in order]
        select, select_source = split["select"], f"{len(split['select'])} held-out selection images"
        if not select:
            select = train[calib_images:] or train
            select_source = f"{len(select)} training images" + (
                " calibration left" if len(train) > calib_images else " (all used for calibration too)"
            )
        return cls(split["test"], gate, select, train[:calib_images], split["train"], gate_source, select_source)

    def decode(self, preset) -> ImageSets:
        """Every image decoded and preprocessed once, with `preset` (the deployable's eval transform)."""
        sets = {}
        for name in tqdm(("test", "gate", "select"), desc="decoding the test, gate and selection images", leave=False):
            rows = getattr(self, name)
            sets[name] = Images(stack_images(rows, preset).numpy(), np.array([r.label for r in rows]))
        calibration = stack_images(self.calibration, preset).numpy()
        return ImageSets(sets["test"], sets["gate"], sets["select"], calibration, self)


@dataclass(frozen=True)
class ImageSets:
    test: Images
    gate: Images
    select: Images
    calibration: np.ndarray
    held_out: HeldOut | None = None  # the rows they came from (None: arrays made by hand)
