"""params.yaml `lio`: the method's settings (docs/method.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config.schema import need, need_number
from pipeline.core.arch import STAGES


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
        need(
            not bad, where, "lio.stages", f"unknown stage(s) {bad}; use a subset of {list(STAGES)} ([] is the baseline)"
        )
        need(len(set(self.stages)) == len(self.stages), where, "lio.stages", "a stage is listed twice")
        need(self.P >= 1, where, "lio.P", f"must be >= 1, got {self.P}")
        need(
            self.mask_source == "pseudo" or (self.oel and bool(self.stages)),
            where,
            "lio.mask_source",
            "gt replaces OEL's target, so it needs lio.oel: true and at least one stage; use pseudo",
        )
        need(self.pool >= 1, where, "lio.pool", f"must be >= 1, got {self.pool}")
        for name in ("alpha", "beta"):
            need_number(getattr(self, name), where, f"lio.{name}", "0.1")
        need(self.scl_channels >= 1, where, "lio.scl_channels", "must be >= 1; e.g. 512")
