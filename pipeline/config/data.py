"""params.yaml `data` (and `seed`): the dataset, its splits and transforms; the prepare stage's view."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.schema import Params, need


@dataclass
class SyntheticConfig:
    classes: int = 6
    images_per_class: int = 140
    test_fraction: float = 0.3
    image_size: int = 64
    extra_test_per_class: int = 0  # more test images per class, from their own random stream: train/val unchanged
    extra_gate_per_class: int = 0  # held-out images per class for the precision gates, from a third stream
    extra_select_per_class: int = 0  # held-out images per class that choose the INT8 settings, from a fourth stream
    layout_seed: int = -1  # seed of the class arrangements; -1: `seed` (one stream for layouts and images)
    skip_classes: int = 0  # draw this many arrangements first and leave them out (disjoint pre-training classes)
    # harder data (docs/datasets.md, "Harder on purpose"); the defaults draw no extra random number
    min_shape_diff: float = 0.35  # how much two classes' normalised distance matrices differ, at least
    siblings: int = 0  # classes made from each drawn arrangement by moving one part (fine-grained families)
    distractors: int = 0  # full-size parts of the object's types per image, never touching the object
    scale_min: float = 0.85  # object scale, drawn per image
    scale_max: float = 1.1
    tilt: float = 0.0  # foreshortening along a random axis by a factor in [1 - tilt, 1]

    def check(self, where: str) -> None:
        need(self.classes >= 2, where, "data.synthetic.classes", f"must be >= 2, got {self.classes}; e.g. 6")
        need(self.images_per_class >= 4, where, "data.synthetic.images_per_class", "must be >= 4; e.g. 140")
        need(0 < self.test_fraction < 1, where, "data.synthetic.test_fraction", "must be in (0, 1); e.g. 0.3")
        need(self.extra_test_per_class >= 0, where, "data.synthetic.extra_test_per_class", "must be >= 0; e.g. 0")
        need(self.extra_gate_per_class >= 0, where, "data.synthetic.extra_gate_per_class", "must be >= 0; e.g. 70")
        need(self.extra_select_per_class >= 0, where, "data.synthetic.extra_select_per_class", "must be >= 0; e.g. 70")
        need(self.layout_seed >= -1, where, "data.synthetic.layout_seed", "must be >= 0, or -1 to follow `seed`")
        need(self.skip_classes >= 0, where, "data.synthetic.skip_classes", "must be >= 0; e.g. 0")
        need(self.image_size >= 16, where, "data.synthetic.image_size", f"must be >= 16 pixels, got {self.image_size}")
        need(0 < self.min_shape_diff < 2, where, "data.synthetic.min_shape_diff", "must be in (0, 2); e.g. 0.35")
        need(self.siblings >= 0, where, "data.synthetic.siblings", "must be >= 0; e.g. 0 (3: families of 4 classes)")
        need(0 <= self.distractors <= 8, where, "data.synthetic.distractors", "must be in [0, 8]; e.g. 0")
        need(
            0 < self.scale_min <= self.scale_max <= 1.2,
            where,
            "data.synthetic.scale_min",
            f"need 0 < scale_min <= scale_max <= 1.2 (the object stays in the image), got {self.scale_min}, "
            f"{self.scale_max}",
        )
        need(
            0 <= self.tilt < 1, where, "data.synthetic.tilt", "must be in [0, 1); e.g. 0.4 (views up to 53 degrees off)"
        )


@dataclass
class TransformConfig:
    """Defaults are the paper's recipe; params.yaml sets 72/64 for the embedded 64 px set."""

    resize: int = 512  # shorter side before cropping
    crop: int = 448  # network input
    rotation: float = 15.0  # random rotation in degrees, training only
    hflip: bool = True

    def check(self, where: str) -> None:
        need(self.crop >= 16, where, "data.transforms.crop", f"must be >= 16 pixels, got {self.crop}; e.g. 64")
        need(self.crop <= self.resize, where, "data.transforms.crop", "must not exceed data.transforms.resize")
        need(
            math.isfinite(self.rotation) and 0 <= self.rotation <= 180,
            where,
            "data.transforms.rotation",
            "degrees in [0, 180]",
        )


@dataclass
class DataConfig:
    format: Literal["synthetic", "cub", "cars", "aircraft", "imagefolder"] = "synthetic"
    root: str = "data/raw"
    val_fraction: float = 0.15
    on_bad_image: Literal["fail", "skip"] = "fail"
    workers: int = 2
    augment: Literal["auto", "workers", "device"] = "auto"  # where training images are augmented; auto: device on CUDA
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)

    def check(self, where: str) -> None:
        self.synthetic.check(where)
        self.transforms.check(where)
        need(
            self.workers >= 0, where, "data.workers", f"must be >= 0 (0 loads in the main process), got {self.workers}"
        )
        need(0 < self.val_fraction < 1, where, "data.val_fraction", "must be in (0, 1)")
        need(
            bool(self.root) and (self.format == "synthetic" or self.root != "data/raw"),
            where,
            "data.root",
            f"set the dataset folder for format {self.format!r} (synthetic ignores it; keep data/raw there)",
        )


@dataclass
class PrepareParams(Params):
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
