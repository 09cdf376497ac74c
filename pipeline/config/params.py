"""Every section of params.yaml at once, with every cross-section check: what the tests
and the study build and write; a stage loads only its own view (schema.load)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.engine import EngineConfig
from pipeline.config.export import ExportConfig
from pipeline.config.report import ReportConfig
from pipeline.config.schema import load, need
from pipeline.config.train import TrainParams


@dataclass
class Config(TrainParams):
    """TrainParams' sections, then the export's, the engine's and the report's."""

    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def cross_check(self, where: str) -> None:
        super().cross_check(where)
        need(
            self.engine.precision in self.export.precisions,
            where,
            "engine.precision",
            f"{self.engine.precision!r} must be one of export.precisions",
        )


def load_config(path: str | Path = "params.yaml") -> Config:
    return load(path, Config)
