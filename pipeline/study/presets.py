"""What a study runs: typed presets (the budget every run shares) and arms (the `lio`
settings each one changes), as dotted params -> values. Every run has the same budget; only the
arm's settings and the seed differ. The seed changes both the generated data and the
initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import PipelineError


class StudyError(PipelineError):
    pass


#: the value of `model.pretrained` in a preset that fine-tunes the backbone `lio study pretrain` wrote
PRETRAINED_BACKBONE = "{pretrained}"

_GRAD, _DETACHED = {"lio.target_grad": True}, {"lio.target_grad": False}
_GROUP = {"lio.positives": "same_class"}  # M against the image's own group (the paper)
#: arm -> its overrides (on top of the preset). Every LIO setting a arm depends on is
#: spelled out, so a arm means the same thing whatever params.yaml's defaults are.
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {"lio.stages": []},
    "lio": {**_GRAD, "lio.scl_weights": "extent", **_GROUP},  # multi-stage, gradient through M (released code)
    "lio-detached": {**_DETACHED, "lio.scl_weights": "extent", **_GROUP},  # M as a constant target
    "oel-only": {"lio.scl": False, **_GRAD, **_GROUP},
    "scl-only": {"lio.oel": False, "lio.scl_weights": "extent", **_GROUP},  # SCL's guide is M
    "lio-gm": {"lio.mask_source": "gt", "lio.scl_weights": "extent", **_GROUP},
    "lio-binary": {**_GRAD, "lio.scl_weights": "binary", **_GROUP},  # the released code's SCL weights
    # LIO with M against the released code's batch rows (images of other groups), not the image's class
    "lio-batch": {**_GRAD, "lio.scl_weights": "extent", "lio.positives": "batch"},
}
#: arm -> the arm it differs from in one setting, compared paired by seed besides the baseline
REFERENCES = {"lio-batch": "lio"}
#: arms that get the full seed count; the others get `other_seeds`
MAIN_ARMS = ("baseline", "lio")
#: arms that can become params.yaml's default: every LIO setting that needs no true masks
CANDIDATES = ("lio", "lio-detached", "oel-only", "scl-only", "lio-binary", "lio-batch")


@dataclass(frozen=True)
class Preset:
    description: str
    overrides: dict[str, Any]  # dotted param -> value, the budget every run of the preset shares
    arms: tuple[str, ...]
    target: str = ""  # the dvc.yaml stage a run goes up to ("": the whole pipeline)
    seeds: int = 8  # `lio study queue`'s default seeds for the baseline and LIO
    other_seeds: int = 3  # ... and for the other arms

    def command(self, name: str) -> str:
        """The whole study of preset `name`, as the README gives it."""
        pretrain = "lio study pretrain && " if self.overrides.get("model.pretrained") == PRETRAINED_BACKBONE else ""
        queue = f"lio study queue --preset {name} && dvc queue start --jobs 1"
        return f"{pretrain}{queue} && lio study collect --preset {name}"

    def settings(self, pretrained: Path | None = None) -> list[str]:
        """The overrides as `-S key=value` texts (what study.json records; with `pretrained`, the
        backbone's path filled in, as `dvc exp run` gets them)."""
        out = []
        for key, value in self.overrides.items():
            if value == PRETRAINED_BACKBONE and pretrained is not None:
                value = str(pretrained.resolve())
            out.append(override_text(key, value))
        return out


def override_text(key: str, value: Any) -> str:
    """`key=value` as DVC's `-S` reads it (YAML): true/false, [a,b], numbers and strings as written."""

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, list):
            return "[" + ",".join(text(x) for x in v) + "]"
        return str(v)

    return f"{key}={text(value)}"


#: The training recipe every preset was designed and run with, before the embedded default's changed
#: (issue "A default model that learns"): pinned, so that no preset changes when params.yaml does.
RECIPE_2026_11 = {
    "data.transforms.hflip": True,
    "model.zero_init_residual": False,
    "train.lr": 0.001,
    "train.label_smoothing": 0.0,
}
#: fp32 on the CPU, as the CPU presets' runs were recorded (bf16 autocast came with that issue)
FP32 = {"train.amp": False}
#: every setting a preset pins so that it keeps its meaning (reports/study.json recorded the runs before)
PINNED = {**RECIPE_2026_11, **FP32}
_FAST_DEPLOY = {
    "export.precisions": ["fp32"],
    "engine.precision": "fp32",
    "report.iters": 5,
    "report.throughput_iters": 1,
}
# The embedded default's 6 classes x 140 images are too easy at 112 px (a ResNet-18 baseline
# reached 0.996 test top-1, leaving nothing to measure); 16 classes x 40 images is a few-shot,
# fine-grained regime where the baseline reached 0.854 (validation still rising at epoch 14).
# 52 extra test images per class make the test split 16 x 64 = 1024 images (binomial error
# about 1 point instead of 2) without changing the training or validation images.
_FEW_SHOT = {
    "data.synthetic.classes": 16,
    "data.synthetic.images_per_class": 40,
    "data.synthetic.extra_test_per_class": 52,
}
_112PX = {"data.synthetic.image_size": 112, "data.transforms.resize": 126, "data.transforms.crop": 112}
#: The transfer regime: arrangements from one fixed stream; the first PRETRAIN_CLASSES of it
#: pre-train a backbone once (`lio study pretrain`), the next 16 are the study's classes.
LAYOUT_SEED, PRETRAIN_CLASSES = 1000, 48
PRETRAINED = Path("models/pretrained/transfer-resnet18.pt")
#: Where the paper says LIO matters (issue "Evidence, third pass"): classes that differ in one part's
#: position (pairs of sibling arrangements), distractors made of the object's own part types, stronger
#: pose (foreshortening, a wider scale range). Sized on 2 CPU cores to converge: a pilot baseline (seed 0)
#: fitted its training split (0.97 at the last epochs) with its best validation epoch at 20 of 30.
_STRUCTURE = {
    "data.synthetic.classes": 8,
    "data.synthetic.images_per_class": 100,
    "data.synthetic.test_fraction": 0.15,
    "data.synthetic.extra_test_per_class": 113,  # 15 + 113 = 128 test images per class, 1024 in all
    "data.synthetic.extra_gate_per_class": 0,
    "data.synthetic.extra_select_per_class": 0,
    "data.synthetic.siblings": 1,
    "data.synthetic.min_shape_diff": 0.25,
    "data.synthetic.distractors": 2,
    "data.synthetic.tilt": 0.2,
    "data.synthetic.scale_min": 0.75,
    "data.synthetic.image_size": 64,
    "data.transforms.resize": 72,
    "data.transforms.crop": 64,
    "data.transforms.hflip": False,
    "model.arch": "resnet18",
    "model.zero_init_residual": True,
    "lio.stages": ["layer2", "layer3"],  # maps 8x8 and 4x4 at 64 px (layer4's would be 2x2)
    "train.epochs": 30,
    "train.lr": 0.003,
    "train.label_smoothing": 0.0,
    "train.amp": "auto",  # bf16 where the CPU has it natively; each run records the CPU it ran on
}
PRESETS = {
    "structure": Preset(
        "synthetic 8 classes x 100 images (72 train, 13 val, 15 + 113 extra test per class: 1024 test images) at "
        "64 px, in sibling pairs that differ in one part's position (min_shape_diff 0.25), 2 distractors of the "
        "object's own part types, foreshortening up to 0.2 and scale 0.75-1.1; ResNet-18 from scratch, 30 epochs "
        "of AdamW lr 0.003, batch 24, LIO on layer2 and layer3 (maps 8x8 / 4x4); runs stop after `localise`",
        _STRUCTURE,
        ("baseline", "lio", "oel-only", "scl-only"),
        target="localise",
        # the resolution goal: at the paired spread of 0.02 seen in the first 8 seeds, 18 seeds make the
        # 95% interval +-0.01 (seeds_for(0.01, 0.02)); 72 runs of about 2.7 min on 2 cores: about 3 hours
        seeds=18,
        other_seeds=18,
    ),
    # 2 CPU cores: every LIO map at least 4x4 (112 px -> 14/7/4), a ResNet-18 for the study alone.
    "cpu": Preset(
        "synthetic 16 classes x 40 images (24 train, 4 val, 12 + 52 extra test per class: 1024 test "
        "images) at 112 px, ResNet-18 from scratch, 14 epochs of AdamW, batch 24, maps 14x14 / 7x7 / 4x4",
        {
            **_FEW_SHOT,
            **_112PX,
            **RECIPE_2026_11,
            **FP32,
            "model.arch": "resnet18",
            "train.epochs": 14,
            **_FAST_DEPLOY,
        },
        tuple(ARMS),
    ),
    # The paper's regime: fine-tuning a pre-trained backbone with SGD, new layers at 10x the lr.
    "transfer": Preset(
        f"a ResNet-18 pre-trained once on {PRETRAIN_CLASSES} synthetic classes (`lio study pretrain`), "
        "fine-tuned on 16 other classes with 16 images each (9 train, 3 val, 4 + 60 extra test per class: 1024 test "
        "images) at 112 px; SGD lr 0.001 (new layers 0.01), momentum 0.9, weight decay 1e-4, 14 epochs, batch 24",
        {
            "data.synthetic.classes": 16,
            "data.synthetic.images_per_class": 16,
            "data.synthetic.test_fraction": 0.25,
            "data.synthetic.extra_test_per_class": 60,
            "data.val_fraction": 0.25,
            "data.synthetic.layout_seed": LAYOUT_SEED,
            "data.synthetic.skip_classes": PRETRAIN_CLASSES,
            **_112PX,
            "model.arch": "resnet18",
            "model.pretrained": PRETRAINED_BACKBONE,
            "train.optimizer": "sgd",
            "train.lr": 0.001,
            "train.head_lr_mult": 10,
            "train.weight_decay": 0.0001,
            "train.epochs": 14,
            **_FAST_DEPLOY,
            **RECIPE_2026_11,  # its train.lr is the preset's own, above
            **FP32,
        },
        ("baseline", "lio", "lio-detached", "lio-batch"),
    ),
    # The paper's geometry on one GPU: 448 px, maps pooled by 2 to 28/14/7, ResNet-50.
    "gpu": Preset(
        "synthetic 16 classes x 40 images at 448 px, ResNet-50 from scratch, lio.pool 2 "
        "(maps 28x28 / 14x14 / 7x7), 30 epochs, batch 48, bf16",
        {
            **_FEW_SHOT,
            "data.synthetic.image_size": 448,
            "data.transforms.resize": 512,
            "data.transforms.crop": 448,
            **RECIPE_2026_11,
            "model.arch": "resnet50",
            "lio.pool": 2,
            "train.epochs": 30,
            "train.batch_size": 48,
            "data.workers": 8,
            **_FAST_DEPLOY,
        },
        tuple(ARMS),
    ),
}
#: The pre-training run of the transfer preset: a plain ResNet-18 on classes the study never sees.
PRETRAIN = {
    "seed": 0,
    "data.synthetic.classes": PRETRAIN_CLASSES,
    "data.synthetic.images_per_class": 30,
    "data.synthetic.layout_seed": LAYOUT_SEED,
    **_112PX,
    **RECIPE_2026_11,
    **FP32,
    "model.arch": "resnet18",
    "lio.stages": [],
    "train.epochs": 10,
}


def grid(
    preset: str, seeds: int, other_seeds: int, arms: list[str] | None = None, pretrained: Path = PRETRAINED
) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) for every run of the study (of `arms`, default the preset's)."""
    if preset not in PRESETS:
        raise StudyError(f"unknown study preset {preset!r}; use one of {', '.join(PRESETS)}")
    allowed = PRESETS[preset].arms
    unknown = sorted(set(arms or []) - set(allowed))
    if unknown:
        raise StudyError(f"unknown arm(s) {', '.join(unknown)} for preset {preset}; use some of {', '.join(allowed)}")
    settings = PRESETS[preset].settings(pretrained)
    runs = []  # seed-major, so that a study cut short still has paired runs of every arm
    for seed in range(max(seeds, other_seeds)):
        for arm in allowed:
            if arms and arm not in arms:
                continue
            if seed < (seeds if arm in MAIN_ARMS else other_seeds):
                own = [override_text(k, v) for k, v in ARMS[arm].items()]
                runs.append((f"study-{preset}-{arm}-s{seed}", [f"seed={seed}", *settings, *own]))
    return runs
