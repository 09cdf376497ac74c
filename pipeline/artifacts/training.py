"""train: the training run's results, inside models/lio.pt and dvclive/metrics.json (one shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from pipeline.artifacts.base import Artifact


@dataclass(frozen=True)
class Best:
    epoch: int
    val_top1: float


@dataclass(frozen=True)
class TestScore:
    top1: float
    top5: float


@dataclass(frozen=True)
class TrainingSummary(Artifact):
    """One shape for the run's results: dvclive/metrics.json and models/lio.pt hold the same."""

    STAGE: ClassVar[str] = "train"
    best: Best
    test: TestScore
    chance: float
    train_seconds: float
    images: dict[str, int] = field(default_factory=dict)  # per split: train, val, test
    ddp_replicas_identical: bool | None = None


@dataclass(frozen=True)
class LastEpoch:
    top1: float


@dataclass(frozen=True)
class LiveMetrics(TrainingSummary):
    """dvclive/metrics.json: the summary, beside dvclive's last logged epoch (what the study reads)."""

    train: LastEpoch | None = None  # the last epoch's training metrics
