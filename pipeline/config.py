"""The typed configuration: built once from params.yaml, validated with clear errors.

Every stage reads its own section; an unknown key, a wrong type or a bad value raises
ConfigError naming the file, the dotted field and what to write instead.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from pipeline.errors import PipelineError

#: torchvision classifiers LIO can train (each has layer1..layer4 and an `fc` head).
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")
STAGES = ("layer1", "layer2", "layer3", "layer4")
#: ONNX variants (pipeline/paths.py names their files): fp32 from torch.export, fp16 by ModelOpt
#: AutoCast, int8 by ModelOpt post-training quantization.
PRECISIONS = ("fp32", "fp16", "int8")


class ConfigError(PipelineError, ValueError):
    pass


@dataclass
class SyntheticConfig:
    classes: int = 6
    images_per_class: int = 140
    test_fraction: float = 0.3
    image_size: int = 64
    extra_test_per_class: int = 0  # more test images per class, from their own random stream: train/val unchanged
    layout_seed: int = -1  # seed of the class arrangements; -1: `seed` (one stream for layouts and images)
    skip_classes: int = 0  # draw this many arrangements first and leave them out (disjoint pre-training classes)


@dataclass
class TransformConfig:
    """Defaults are the paper's recipe; params.yaml sets 72/64 for the embedded 64 px set."""

    resize: int = 512  # shorter side before cropping
    crop: int = 448  # network input
    rotation: float = 15.0  # random rotation in degrees, training only
    hflip: bool = True


@dataclass
class DataConfig:
    format: Literal["synthetic", "cub", "cars", "aircraft", "imagefolder"] = "synthetic"
    root: str = "data/raw"
    val_fraction: float = 0.15
    on_bad_image: Literal["fail", "skip"] = "fail"
    workers: int = 2
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    pretrained: str = "none"  # none | imagenet | path to a state dict


@dataclass
class LIOConfig:
    stages: list[str] = field(default_factory=lambda: ["layer2", "layer3", "layer4"])
    P: int = 3
    alpha: float = 0.1
    beta: float = 0.1
    pool: int = 1
    scl_channels: int = 512
    oel: bool = True
    scl: bool = True
    mask_source: Literal["pseudo", "gt"] = "pseudo"  # OEL target: pseudo mask M, or the true mask ("w/ GM")
    target_grad: bool = True  # L_oel back-propagates through M as in the released code; false: M is a constant
    scl_weights: Literal["extent", "binary"] = "extent"  # SCL weights: relu(m') (paper) or m' > mean(m') (code)


@dataclass
class TrainConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    epochs: int = 14
    batch_size: int = 24  # images per step on each rank, a multiple of P+1
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    head_lr_mult: float = 1.0  # learning-rate multiplier for the new layers (heads and fc)
    weight_decay: float = 0.05
    momentum: float = 0.9
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = 1.0
    step_epochs: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    ema_decay: float = 0.0  # 0 disables the weight EMA
    amp: bool = True  # bf16 autocast on CUDA GPUs that support it
    channels_last: bool = True  # on CUDA
    eval_batch_size: int = 64


@dataclass
class ExportConfig:
    opset: int = 18  # torch.export-based exporter; TensorRT 10.12+ parses it
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    calib_images: int = 64


@dataclass
class EngineConfig:
    required: Literal["auto", "true", "false"] = "auto"
    precision: str = "fp16"  # one of PRECISIONS, and of export.precisions
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096
    optimization_level: int = 3


@dataclass
class ReportConfig:
    warmup: int = 5
    iters: int = 30
    throughput_iters: int = 5
    mask_images: int = 6
    mask_threshold: float = 0.5


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lio: LIOConfig = field(default_factory=LIOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self, where: str = "params.yaml") -> Config:
        def check(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: {name}: {fix}")

        check(self.model.arch in ARCHS, "model.arch", f"{self.model.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        bad = [s for s in self.lio.stages if s not in STAGES]
        check(not bad, "lio.stages", f"unknown stage(s) {bad}; use a subset of {list(STAGES)} ([] is the baseline)")
        check(len(set(self.lio.stages)) == len(self.lio.stages), "lio.stages", "a stage is listed twice")
        check(self.lio.P >= 1, "lio.P", f"must be >= 1, got {self.lio.P}")
        check(
            self.lio.mask_source == "pseudo" or (self.lio.oel and bool(self.lio.stages)),
            "lio.mask_source",
            "gt replaces OEL's target, so it needs lio.oel: true and at least one stage; use pseudo",
        )
        check(self.lio.pool >= 1, "lio.pool", f"must be >= 1, got {self.lio.pool}")
        group = self.lio.P + 1
        check(
            self.train.batch_size >= group and self.train.batch_size % group == 0,
            "train.batch_size",
            f"{self.train.batch_size} is not a multiple of lio.P+1={group}; "
            f"use e.g. {group * max(1, self.train.batch_size // group)}",
        )
        check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}; e.g. 0")
        syn = self.data.synthetic
        check(syn.classes >= 2, "data.synthetic.classes", f"must be >= 2, got {syn.classes}; e.g. 6")
        check(syn.images_per_class >= 4, "data.synthetic.images_per_class", "must be >= 4; e.g. 140")
        check(0 < syn.test_fraction < 1, "data.synthetic.test_fraction", "must be in (0, 1); e.g. 0.3")
        check(syn.extra_test_per_class >= 0, "data.synthetic.extra_test_per_class", "must be >= 0; e.g. 0")
        check(syn.layout_seed >= -1, "data.synthetic.layout_seed", "must be >= 0, or -1 to follow `seed`")
        check(syn.skip_classes >= 0, "data.synthetic.skip_classes", "must be >= 0; e.g. 0")
        check(syn.image_size >= 16, "data.synthetic.image_size", f"must be >= 16 pixels, got {syn.image_size}; e.g. 64")
        check(
            self.data.workers >= 0,
            "data.workers",
            f"must be >= 0 (0 loads in the main process), got {self.data.workers}",
        )
        tf = self.data.transforms
        check(tf.crop >= 16, "data.transforms.crop", f"must be >= 16 pixels, got {tf.crop}; e.g. 64")
        check(finite(tf.rotation) and 0 <= tf.rotation <= 180, "data.transforms.rotation", "degrees in [0, 180]")
        check(
            DEVICE.fullmatch(self.train.device) is not None,
            "train.device",
            f"{self.train.device!r} is not a device; use auto, cpu, cuda or cuda:N",
        )
        t = self.train
        check(t.epochs >= 1, "train.epochs", "must be >= 1")
        check(finite(t.lr) and t.lr > 0, "train.lr", f"must be a finite number > 0, got {t.lr}; e.g. 1.0e-3")
        for name in ("weight_decay", "warmup_epochs"):
            value = getattr(t, name)
            check(finite(value) and value >= 0, f"train.{name}", f"must be a finite number >= 0, got {value}")
        check(finite(t.head_lr_mult) and t.head_lr_mult > 0, "train.head_lr_mult", "must be a finite number > 0")
        check(finite(t.momentum) and 0 <= t.momentum < 1, "train.momentum", "must be in [0, 1); e.g. 0.9")
        check(finite(t.step_gamma) and t.step_gamma > 0, "train.step_gamma", "must be a finite number > 0; e.g. 0.1")
        check(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1, got {t.eval_batch_size}; e.g. 64")
        for name in ("alpha", "beta"):
            value = getattr(self.lio, name)
            check(finite(value) and value >= 0, f"lio.{name}", f"must be a finite number >= 0, got {value}; e.g. 0.1")
        check(self.lio.scl_channels >= 1, "lio.scl_channels", "must be >= 1; e.g. 512")
        check(self.export.calib_images >= 1, "export.calib_images", "must be >= 1; e.g. 64")
        check(self.engine.workspace_mib >= 1, "engine.workspace_mib", "must be >= 1; e.g. 4096")
        check(0 <= self.engine.optimization_level <= 5, "engine.optimization_level", "must be in 0..5; e.g. 3")
        r = self.report
        check(
            r.warmup >= 0 and r.iters >= 1 and r.throughput_iters >= 1,
            "report.warmup/iters/throughput_iters",
            "need warmup >= 0, iters >= 1, throughput_iters >= 1",
        )
        check(r.mask_images >= 1, "report.mask_images", "must be >= 1; e.g. 6")
        check(finite(r.mask_threshold) and 0 < r.mask_threshold < 1, "report.mask_threshold", "must be in (0, 1)")
        check(0 <= self.train.ema_decay < 1, "train.ema_decay", "must be in [0, 1); 0 disables the EMA")
        check(0 < self.data.val_fraction < 1, "data.val_fraction", "must be in (0, 1)")
        check(
            self.data.transforms.crop <= self.data.transforms.resize,
            "data.transforms.crop",
            "must not exceed data.transforms.resize",
        )
        check(
            bool(self.data.root) and (self.data.format == "synthetic" or self.data.root != "data/raw"),
            "data.root",
            f"set the dataset folder for format {self.data.format!r} (synthetic ignores it; keep data/raw there)",
        )
        unknown = [p for p in self.export.precisions if p not in PRECISIONS]
        check(
            not unknown and "fp32" in self.export.precisions,
            "export.precisions",
            f"a list of {', '.join(PRECISIONS)} that includes fp32",
        )
        check(
            self.engine.precision in self.export.precisions,
            "engine.precision",
            f"{self.engine.precision!r} must be one of export.precisions",
        )
        e = self.engine
        check(
            1 <= e.min_batch <= e.opt_batch <= e.max_batch,
            "engine.min_batch/opt_batch/max_batch",
            "need 1 <= min <= opt <= max",
        )
        check(self.export.opset >= 18, "export.opset", "must be >= 18 (torch's ONNX exporter)")
        return self


def finite(x: float) -> bool:
    return math.isfinite(x)


#: Sections a params file must set: a file that leaves one out would silently run the
#: code's defaults (the paper's 448 px recipe), a different experiment. Fields inside a
#: section may be left out and take the defaults of the dataclasses above.
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
REQUIRED = ("seed", "data", "model", "lio", "train", "export", "engine", "report")
REQUIRED_DATA = ("format", "transforms")


def _build(cls, data, where: str, path: str):
    """Dataclass `cls` from a mapping, checking keys and value types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {path or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        dotted = ", ".join(f"{path}.{k}" if path else k for k in unknown)
        raise ConfigError(f"{where}: unknown field(s) {dotted}; known: {', '.join(sorted(names))}")
    values = {}
    for key, value in data.items():
        name = f"{path}.{key}" if path else key
        values[key] = _coerce(hints[key], value, where, name)
    return cls(**values)


def _coerce(hint, value, where: str, name: str):
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where, name)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and all(isinstance(c, str) for c in choices):
            value = str(value).lower()
        if value not in choices:
            raise ConfigError(f"{where}: {name}: {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, where, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type {hint}")
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}: {name}: expected a number, got {value!r}") from None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }[hint]
    if not ok:
        raise ConfigError(f"{where}: {name}: expected {hint.__name__}, got {value!r}")
    return hint(value)


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; pass --params FILE or run from the repository root")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections ({', '.join(REQUIRED)})")
    missing = [k for k in REQUIRED if k not in data]
    missing += [f"data.{k}" for k in REQUIRED_DATA if isinstance(data.get("data"), dict) and k not in data["data"]]
    if missing:
        raise ConfigError(
            f"{path}: missing {', '.join(missing)}; every section must be set (its fields may be left out and "
            "then take the code's defaults, which are the paper's 448 px recipe): copy them from the repository's "
            "params.yaml"
        )
    return _build(Config, data, str(path), "").validate(str(path))


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
