"""lio study collect: reports/study.json, every recorded run of every preset, aggregated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.artifacts.base import Artifact
from pipeline.artifacts.extent import StageExtent


@dataclass(frozen=True)
class StudyRun:
    """One finished experiment, as `dvc exp show` gave it on the machine that ran it."""

    name: str
    arm: str
    seed: int
    test_top1: float
    best_val_top1: float | None
    best_epoch: int | None
    train_seconds: float | None
    localisation: dict[str, StageExtent] = field(default_factory=dict)  # its reports/extent.json stages
    train_top1_last: float | None = None  # the last epoch's training top-1 (runs before this field: None)
    epochs: int | None = None
    machine: str | None = None  # the CPU it ran on
    val_curve: list[float] | None = None  # validation top-1 of every epoch (runs before this field: None)

    @classmethod
    def upgrade(cls, value: Any) -> Any:
        """A run recorded when an arm was called a variant."""
        return _renamed(value, "variant", "arm")


@dataclass(frozen=True)
class Paired:
    """A arm's per-seed differences to another's (same seed: same data, same initialisation)."""

    per_seed: dict[str, float]
    mean: float | None
    std: float | None
    ci95: tuple[float, float] | None  # t-interval over seeds
    wins: int
    n: int

    @property
    def half_width(self) -> float | None:
        return None if self.ci95 is None else (self.ci95[1] - self.ci95[0]) / 2


@dataclass(frozen=True)
class Convergence:
    """Whether a arm's runs converged: best validation epoch before the last fifth of the
    schedule, training top-1 at the last epoch, and what the last fifth added to validation top-1
    (a best epoch that is late by one validation image is not a run still learning)."""

    runs: int
    best_before_last_fifth: int
    train_top1_last_mean: float
    train_top1_last_min: float
    # what validation top-1 gained in the last fifth over the best before it (runs with a val_curve)
    curves: int = 0
    last_fifth_gain_mean: float | None = None
    last_fifth_gain_max: float | None = None


@dataclass(frozen=True)
class ArmSummary:
    seeds: list[int]
    test_top1_mean: float | None
    test_top1_std: float | None
    val_top1_mean: float | None
    test_vs_baseline: Paired
    val_vs_baseline: Paired
    train_seconds_min: float | None
    localisation: dict[str, StageExtent] = field(default_factory=dict)  # per stage, the mean over seeds
    reference: str | None = None  # the arm it differs from in one setting
    test_vs_reference: Paired | None = None
    convergence: Convergence | None = None


@dataclass(frozen=True)
class Choice:
    """The default by the study's rule: best mean validation top-1 over the seeds every candidate ran."""

    seeds: list[int]
    val_top1_mean: dict[str, float]
    best: str


@dataclass(frozen=True)
class Setting:
    description: str
    set: list[str]  # the `-S` overrides every run of the preset shares


@dataclass(frozen=True)
class PresetStudy:
    preset: str
    setting: Setting
    command: str
    machine: str  # the machine of the latest collected runs (each run records its own)
    arms: dict[str, ArmSummary]
    choice: Choice | None
    runs: list[StudyRun]

    @classmethod
    def upgrade(cls, value: Any) -> Any:
        """A section recorded when its arms were called variants."""
        return _renamed(value, "variants", "arms")


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict) and old in value and new not in value:
        return {new if k == old else k: v for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Study(Artifact):
    STAGE: ClassVar[str] = "study"  # not a dvc.yaml stage: `lio study collect` writes it
    presets: dict[str, PresetStudy] = field(default_factory=dict)

    @classmethod
    def read(cls, path) -> Study:
        """The recorded study, or an empty one (a fresh project); a file from before presets were
        sections is read as the cpu preset's. A broken file names how to restore it."""
        import json
        from pathlib import Path

        from pipeline.core.errors import ArtifactError

        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path}: not valid JSON ({e}); restore it with `git checkout {path}`") from e
        data = data if "presets" in data else {"presets": {data["preset"]: data}}
        try:
            return cls.from_json(data, str(path))
        except ArtifactError as e:
            raise ArtifactError(f"{e}; or restore it with `git checkout {path}`") from e
