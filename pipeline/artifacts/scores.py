"""score: reports/scores.json, every backend scored and timed."""

from __future__ import annotations

from dataclasses import dataclass
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
