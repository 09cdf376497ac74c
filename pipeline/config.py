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

from pipeline.backbone import ARCHS, STAGES, stage_size
from pipeline.errors import PipelineError

__all__ = ["ARCHS", "STAGES"]

#: ONNX variants (pipeline/paths.py names their files): fp32 from torch.export, fp16 by ModelOpt
#: AutoCast, int8 by ModelOpt post-training quantization (QDQ for TensorRT), int8_cpu by ONNX Runtime's
#: static quantization (the format its CPU kernels run fastest).
PRECISIONS = ("fp32", "fp16", "int8", "int8_cpu")
#: what TensorRT builds from (int8_cpu is ONNX Runtime's own CPU quantization)
GPU_PRECISIONS = ("fp32", "fp16", "int8")


class ConfigError(PipelineError, ValueError):
    pass


def _need(ok: bool, where: str, name: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {name}: {fix}")


@dataclass
class SyntheticConfig:
    classes: int = 6
    images_per_class: int = 140
    test_fraction: float = 0.3
    image_size: int = 64
    extra_test_per_class: int = 0  # more test images per class, from their own random stream: train/val unchanged
    layout_seed: int = -1  # seed of the class arrangements; -1: `seed` (one stream for layouts and images)
    skip_classes: int = 0  # draw this many arrangements first and leave them out (disjoint pre-training classes)

    def check(self, where: str) -> None:
        _need(self.classes >= 2, where, "data.synthetic.classes", f"must be >= 2, got {self.classes}; e.g. 6")
        _need(self.images_per_class >= 4, where, "data.synthetic.images_per_class", "must be >= 4; e.g. 140")
        _need(0 < self.test_fraction < 1, where, "data.synthetic.test_fraction", "must be in (0, 1); e.g. 0.3")
        _need(self.extra_test_per_class >= 0, where, "data.synthetic.extra_test_per_class", "must be >= 0; e.g. 0")
        _need(self.layout_seed >= -1, where, "data.synthetic.layout_seed", "must be >= 0, or -1 to follow `seed`")
        _need(self.skip_classes >= 0, where, "data.synthetic.skip_classes", "must be >= 0; e.g. 0")
        _need(self.image_size >= 16, where, "data.synthetic.image_size", f"must be >= 16 pixels, got {self.image_size}")


@dataclass
class TransformConfig:
    """Defaults are the paper's recipe; params.yaml sets 72/64 for the embedded 64 px set."""

    resize: int = 512  # shorter side before cropping
    crop: int = 448  # network input
    rotation: float = 15.0  # random rotation in degrees, training only
    hflip: bool = True

    def check(self, where: str) -> None:
        _need(self.crop >= 16, where, "data.transforms.crop", f"must be >= 16 pixels, got {self.crop}; e.g. 64")
        _need(self.crop <= self.resize, where, "data.transforms.crop", "must not exceed data.transforms.resize")
        _need(
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
        _need(
            self.workers >= 0, where, "data.workers", f"must be >= 0 (0 loads in the main process), got {self.workers}"
        )
        _need(0 < self.val_fraction < 1, where, "data.val_fraction", "must be in (0, 1)")
        _need(
            bool(self.root) and (self.format == "synthetic" or self.root != "data/raw"),
            where,
            "data.root",
            f"set the dataset folder for format {self.format!r} (synthetic ignores it; keep data/raw there)",
        )


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    pretrained: str = "none"  # none | imagenet | path to a state dict

    def check(self, where: str) -> None:
        _need(self.arch in ARCHS, where, "model.arch", f"{self.arch!r} is unknown; use one of {', '.join(ARCHS)}")


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
    scl_weights: Literal["binary", "extent"] = "binary"  # SCL weights: m' > mean(m') (code) or relu(m') (paper)
    positives: Literal["same_class", "batch"] = "same_class"  # M against the group (paper) or the code's batch rows

    def check(self, where: str) -> None:
        bad = [s for s in self.stages if s not in STAGES]
        _need(
            not bad, where, "lio.stages", f"unknown stage(s) {bad}; use a subset of {list(STAGES)} ([] is the baseline)"
        )
        _need(len(set(self.stages)) == len(self.stages), where, "lio.stages", "a stage is listed twice")
        _need(self.P >= 1, where, "lio.P", f"must be >= 1, got {self.P}")
        _need(
            self.mask_source == "pseudo" or (self.oel and bool(self.stages)),
            where,
            "lio.mask_source",
            "gt replaces OEL's target, so it needs lio.oel: true and at least one stage; use pseudo",
        )
        _need(self.pool >= 1, where, "lio.pool", f"must be >= 1, got {self.pool}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            _need(
                math.isfinite(value) and value >= 0,
                where,
                f"lio.{name}",
                f"must be a finite number >= 0, got {value}; e.g. 0.1",
            )
        _need(self.scl_channels >= 1, where, "lio.scl_channels", "must be >= 1; e.g. 512")


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
    compile: Literal["auto", "true", "false"] = "auto"  # torch.compile the training step; auto: on CUDA
    eval_batch_size: int = 64

    def check(self, where: str) -> None:
        _need(
            DEVICE.fullmatch(self.device) is not None,
            where,
            "train.device",
            f"{self.device!r} is not a device; use auto, cpu, cuda or cuda:N",
        )
        _need(self.epochs >= 1, where, "train.epochs", "must be >= 1")
        _need(
            math.isfinite(self.lr) and self.lr > 0,
            where,
            "train.lr",
            f"must be a finite number > 0, got {self.lr}; e.g. 1.0e-3",
        )
        for name in ("weight_decay", "warmup_epochs"):
            value = getattr(self, name)
            _need(
                math.isfinite(value) and value >= 0,
                where,
                f"train.{name}",
                f"must be a finite number >= 0, got {value}",
            )
        _need(
            math.isfinite(self.head_lr_mult) and self.head_lr_mult > 0,
            where,
            "train.head_lr_mult",
            "must be a finite number > 0",
        )
        _need(
            math.isfinite(self.momentum) and 0 <= self.momentum < 1,
            where,
            "train.momentum",
            "must be in [0, 1); e.g. 0.9",
        )
        _need(
            math.isfinite(self.step_gamma) and self.step_gamma > 0,
            where,
            "train.step_gamma",
            "must be a finite number > 0; e.g. 0.1",
        )
        _need(
            self.eval_batch_size >= 1,
            where,
            "train.eval_batch_size",
            f"must be >= 1, got {self.eval_batch_size}; e.g. 64",
        )
        _need(0 <= self.ema_decay < 1, where, "train.ema_decay", "must be in [0, 1); 0 disables the EMA")


@dataclass
class Gate:
    """What a reduced-precision variant must keep, against FP32 on the validation split."""

    max_top1_drop: float = 0.005  # top-1 may fall by at most this much (0.005 = half a point)
    min_agreement: float = 0.99  # share of images whose top-1 class equals FP32's

    def check(self, where: str, name: str) -> None:
        _need(
            math.isfinite(self.max_top1_drop) and 0 <= self.max_top1_drop <= 1,
            where,
            f"{name}.max_top1_drop",
            f"must be in [0, 1], got {self.max_top1_drop}; e.g. 0.005",
        )
        _need(
            math.isfinite(self.min_agreement) and 0 <= self.min_agreement <= 1,
            where,
            f"{name}.min_agreement",
            f"must be in [0, 1], got {self.min_agreement}; e.g. 0.99",
        )


@dataclass
class Gates:
    fp16: Gate = field(default_factory=Gate)
    int8: Gate = field(default_factory=Gate)
    int8_cpu: Gate = field(default_factory=Gate)


@dataclass
class ExportConfig:
    opset: int = 18  # torch.export-based exporter; TensorRT 10.12+ parses it
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    calib_images: int = 64
    gates: Gates = field(default_factory=Gates)  # per reduced precision, decided on validation
    int8_repair_layers: int = 8  # when INT8 fails its gate: keep up to this many most sensitive layers in FP16/FP32
    fuse_preprocess: bool = False  # also write model.uint8.onnx: uint8 NHWC in, normalisation inside the graph

    def check(self, where: str) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        _need(
            not unknown and "fp32" in self.precisions,
            where,
            "export.precisions",
            f"a list of {', '.join(PRECISIONS)} that includes fp32",
        )
        _need(self.calib_images >= 1, where, "export.calib_images", "must be >= 1; e.g. 64")
        _need(self.opset >= 18, where, "export.opset", "must be >= 18 (torch's ONNX exporter)")
        _need(self.int8_repair_layers >= 0, where, "export.int8_repair_layers", "must be >= 0 (0: no repair); e.g. 8")
        for name in ("fp16", "int8", "int8_cpu"):
            getattr(self.gates, name).check(where, f"export.gates.{name}")


@dataclass
class EngineConfig:
    required: Literal["auto", "true", "false"] = "auto"
    precision: str = "fp16"  # one of GPU_PRECISIONS, and of export.precisions
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096
    optimization_level: int = 3
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False  # TensorRT's version-compatible plan (runs on later TensorRT releases)

    def check(self, where: str) -> None:
        _need(
            self.precision in GPU_PRECISIONS,
            where,
            "engine.precision",
            f"{self.precision!r} cannot be built into an engine; use one of {', '.join(GPU_PRECISIONS)}",
        )
        _need(self.workspace_mib >= 1, where, "engine.workspace_mib", "must be >= 1; e.g. 4096")
        _need(0 <= self.optimization_level <= 5, where, "engine.optimization_level", "must be in 0..5; e.g. 3")
        _need(
            1 <= self.min_batch <= self.opt_batch <= self.max_batch,
            where,
            "engine.min_batch/opt_batch/max_batch",
            "need 1 <= min <= opt <= max",
        )


@dataclass
class ReportConfig:
    warmup: int = 5
    iters: int = 30
    throughput_iters: int = 5
    mask_images: int = 6
    mask_threshold: float = 0.5

    def check(self, where: str) -> None:
        _need(
            self.warmup >= 0 and self.iters >= 1 and self.throughput_iters >= 1,
            where,
            "report.warmup/iters/throughput_iters",
            "need warmup >= 0, iters >= 1, throughput_iters >= 1",
        )
        _need(self.mask_images >= 1, where, "report.mask_images", "must be >= 1; e.g. 6")
        _need(
            math.isfinite(self.mask_threshold) and 0 < self.mask_threshold < 1,
            where,
            "report.mask_threshold",
            "must be in (0, 1)",
        )


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
        """Each section checks itself; the checks that span sections follow."""
        _need(self.seed >= 0, where, "seed", f"must be >= 0, got {self.seed}; e.g. 0")
        for section in (self.data, self.model, self.lio, self.train, self.export, self.engine, self.report):
            section.check(where)
        group = self.lio.P + 1
        _need(
            self.train.batch_size >= group and self.train.batch_size % group == 0,
            where,
            "train.batch_size",
            f"{self.train.batch_size} is not a multiple of lio.P+1={group}; "
            f"use e.g. {group * max(1, self.train.batch_size // group)}",
        )
        crop = self.data.transforms.crop
        for stage in self.lio.stages:
            side = stage_size(stage, crop) // self.lio.pool
            _need(
                side >= 2,
                where,
                "lio.pool",
                f"{self.lio.pool} pools {stage}'s {stage_size(stage, crop)}x{stage_size(stage, crop)} map at "
                f"data.transforms.crop {crop} to {side}x{side}, smaller than 2x2; lower lio.pool, raise the crop, "
                f"or drop {stage} from lio.stages",
            )
        _need(
            self.engine.precision in self.export.precisions,
            where,
            "engine.precision",
            f"{self.engine.precision!r} must be one of export.precisions",
        )
        return self


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
