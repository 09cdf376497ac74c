"""Every section of params.yaml at once, with every cross-section check: what the tests
and the study build and write; a stage loads only its own view (schema.load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.data import DataConfig
from pipeline.config.engine import EngineConfig
from pipeline.config.export import ExportConfig
from pipeline.config.lio import LIOConfig
from pipeline.config.model import ModelConfig
from pipeline.config.report import ReportConfig
from pipeline.config.schema import Params, load, need
from pipeline.config.train import TrainConfig, TrainParams


@dataclass
class Config(Params):
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lio: LIOConfig = field(default_factory=LIOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def cross_check(self, where: str) -> None:
        TrainParams(self.seed, self.data, self.model, self.lio, self.train).cross_check(where)
        need(
            self.engine.precision in self.export.precisions,
            where,
            "engine.precision",
            f"{self.engine.precision!r} must be one of export.precisions",
        )


def load_config(path: str | Path = "params.yaml") -> Config:
    return load(path, Config)
