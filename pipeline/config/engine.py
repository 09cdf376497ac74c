"""params.yaml `engine`: the TensorRT build; the engine stage's view."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.schema import Params, need
from pipeline.core.arch import GPU_PRECISIONS


@dataclass
class EngineConfig:
    required: Literal["auto", "true", "false"] = "auto"
    precision: str = "int8"  # one of GPU_PRECISIONS, and of export.precisions; a rejected one falls back
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32
    workspace_mib: int = 4096
    optimization_level: int = 3
    hardware_compatibility: Literal["none", "ampere_plus", "same_compute_capability"] = "none"
    version_compatible: bool = False  # TensorRT's version-compatible plan (runs on later TensorRT releases)

    def check(self, where: str) -> None:
        need(
            self.precision in GPU_PRECISIONS,
            where,
            "engine.precision",
            f"{self.precision!r} cannot be built into an engine; use one of {', '.join(GPU_PRECISIONS)}",
        )
        need(self.workspace_mib >= 1, where, "engine.workspace_mib", "must be >= 1; e.g. 4096")
        need(0 <= self.optimization_level <= 5, where, "engine.optimization_level", "must be in 0..5; e.g. 3")
        need(
            1 <= self.min_batch <= self.opt_batch <= self.max_batch,
            where,
            "engine.min_batch/opt_batch/max_batch",
            "need 1 <= min <= opt <= max",
        )


@dataclass
class EngineParams(Params):
    engine: EngineConfig = field(default_factory=EngineConfig)
