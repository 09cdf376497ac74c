"""score: reports/scores.json, every backend scored and timed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.artifacts.base import Artifact


@dataclass(frozen=True)
class BackendScore:
    backend: str
    device: str
    top1: float
    top1_ci95: tuple[float, ...]
    top5: float
    agreement: float
    p50_ms: float
    p90_ms: float
    p99_ms: float | None  # None from fewer than 100 timed calls (pipeline.core.timing.P99_CALLS)
    throughput: float
    size_mb: float


@dataclass(frozen=True)
class ClassScore:
    name: str
    images: int
    top1: float | None
    most_confused_with: str | None


@dataclass(frozen=True)
class Confusion:
    actual: str
    predicted: str
    images: int


@dataclass(frozen=True)
class Scores(Artifact):
    """Every backend that runs here, scored on the test split and timed; per-class results of the
    one that ships (`deployed`)."""

    STAGE: ClassVar[str] = "score"
    test_images: int
    latency_batch: int
    latency_calls: int  # timed calls per backend at the latency batch (report.iters)
    throughput_batch: int  # the batch the img/s column was measured at
    backends: list[BackendScore]
    skipped: dict[str, str]
    deployed: str
    per_class: list[ClassScore]
    confusions: list[Confusion]
    recommendations: list[Recommendation] = field(default_factory=list)  # per target: what to deploy


@dataclass(frozen=True)
class Measured:
    """What the recommended backend measured here, beside ONNX Runtime FP32 on the same CPU."""

    backend: str
    throughput: float
    throughput_vs_fp32: float
    p50_ms: float
    p50_vs_fp32: float
    top1: float
    top1_ci95: tuple[float, ...]
    top1_fp32: float


@dataclass(frozen=True)
class Recommendation:
    """What to deploy on one target (pipeline/deploy/choice.py decides; the report only formats)."""

    target: str  # "CPU" | "GPU (TensorRT)"
    file: str
    precision: str
    built: bool  # the file exists and ran here (a GPU engine may have to be built on the target)
    measured: Measured | None = None  # the CPU numbers it was chosen on
    engine: str | None = None  # GPU: "TensorRT 10.x, H100, compute capability 9.0"
    gate: str | None = None  # GPU, not built: the ONNX variant's gate status
    reason: str | None = None  # GPU, not built: why not here
    fallback: str | None = None  # GPU: why another precision than engine.precision
    runtime: str | None = None  # CPU: the runtime and arithmetic that ran it, and the CPU it was chosen on
