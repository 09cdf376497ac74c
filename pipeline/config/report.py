"""params.yaml `report`: timing and localisation settings; the views of the score and localise stages."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config.engine import EngineConfig
from pipeline.config.export import ExportConfig
from pipeline.config.model import ModelConfig
from pipeline.config.schema import Params, need


@dataclass
class ReportConfig:
    warmup: int = 5
    iters: int = 30
    throughput_iters: int = 5
    mask_images: int = 6
    mask_threshold: float = 0.5

    def check(self, where: str) -> None:
        need(
            self.warmup >= 0 and self.iters >= 1 and self.throughput_iters >= 1,
            where,
            "report.warmup/iters/throughput_iters",
            "need warmup >= 0, iters >= 1, throughput_iters >= 1",
        )
        need(self.mask_images >= 1, where, "report.mask_images", "must be >= 1; e.g. 6")
        need(
            math.isfinite(self.mask_threshold) and 0 < self.mask_threshold < 1,
            where,
            "report.mask_threshold",
            "must be in (0, 1)",
        )


@dataclass
class ScoreParams(Params):
    """The score stage: the deployable (`model.arch`), timing (`report`), the batch the engine is built for."""

    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class RuntimeParams(Params):
    """The runtime stage: the gates and their images (`seed`, `export`), the throughput batch
    (`engine.max_batch`) and the timing (`report`)."""

    seed: int = 0
    export: ExportConfig = field(default_factory=ExportConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class LocaliseParams(Params):
    """The localise stage: the masks figure's images and the IoU threshold (`report`), seeded."""

    seed: int = 0
    report: ReportConfig = field(default_factory=ReportConfig)
