"""engine: models/engine/engine.json, whether and how the engine was built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.artifacts.base import Artifact
from pipeline.artifacts.deployable import Preprocess


@dataclass(frozen=True)
class Profile:
    """The engine's batch range (TensorRT's optimisation profile on the batch axis)."""

    min: int
    opt: int
    max: int


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list[int]


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str


@dataclass(frozen=True)
class Compatibility:
    hardware: str = "none"
    version_compatible: bool = False


@dataclass(frozen=True)
class EngineInfo(Artifact):
    """Whether an engine was built, from which variant, for what; and why not where it was not."""

    STAGE: ClassVar[str] = "engine"
    built: bool
    precision: str
    requested_precision: str
    profile: Profile
    onnx: str
    classes: list[str]
    preprocess: Preprocess
    compatibility: Compatibility = field(default_factory=Compatibility)
    fallback: str | None = None
    reason: str | None = None  # why no engine was built
    tensorrt: str | None = None
    gpu: Gpu | None = None
    input: Tensor | None = None
    output: Tensor | None = None
    onnx_sha256: str | None = None
    engine: str | None = None
