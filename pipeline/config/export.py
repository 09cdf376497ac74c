"""params.yaml `export`: ONNX variants and their gates; the export stage's view."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pipeline.config.model import ModelConfig
from pipeline.config.schema import Params, need
from pipeline.core.arch import PRECISIONS, STAGES


@dataclass
class Gate:
    """What a reduced-precision variant must keep, against FP32 on the validation split."""

    max_top1_drop: float = 0.01  # top-1 may fall by at most this much (0.01 = one point; decidable on 500 images)
    min_agreement: float = 0.99  # share of images whose top-1 class equals FP32's

    def check(self, where: str, name: str) -> None:
        need(
            math.isfinite(self.max_top1_drop) and 0 <= self.max_top1_drop <= 1,
            where,
            f"{name}.max_top1_drop",
            f"must be in [0, 1], got {self.max_top1_drop}; e.g. 0.005",
        )
        need(
            math.isfinite(self.min_agreement) and 0 <= self.min_agreement <= 1,
            where,
            f"{name}.min_agreement",
            f"must be in [0, 1], got {self.min_agreement}; e.g. 0.99",
        )


#: the variants a gate decides: every precision but the FP32 reference
GATED = tuple(p for p in PRECISIONS if p != "fp32")


def default_gates() -> dict[str, Gate]:
    return {p: Gate() for p in GATED}


@dataclass
class ExportConfig:
    opset: int = 18  # torch.export-based exporter; TensorRT 10.12+ parses it
    precisions: list[str] = field(default_factory=lambda: list(PRECISIONS))
    calib_images: int = 64
    gates: dict[str, Gate] = field(default_factory=default_gates)  # precision -> its gate, decided on validation
    int8_repair_stages: int = 3  # when INT8 fails its gate: retry with the stem and 1, 2, ... stages in FP32
    fuse_preprocess: bool = False  # also write model.uint8.onnx: uint8 NHWC in, normalisation inside the graph

    def __post_init__(self) -> None:
        self.gates = default_gates() | self.gates  # a variant params.yaml leaves out keeps the default gate

    def check(self, where: str) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        need(
            not unknown and "fp32" in self.precisions,
            where,
            "export.precisions",
            f"a list of {', '.join(PRECISIONS)} that includes fp32",
        )
        need(self.calib_images >= 1, where, "export.calib_images", "must be >= 1; e.g. 64")
        need(self.opset >= 18, where, "export.opset", "must be >= 18 (torch's ONNX exporter)")
        need(
            0 <= self.int8_repair_stages <= len(STAGES),
            where,
            "export.int8_repair_stages",
            f"must be 0 (no repair) to {len(STAGES)}; e.g. 3",
        )
        unknown = sorted(set(self.gates) - set(GATED))
        need(not unknown, where, "export.gates", f"unknown variant(s) {unknown}; gates exist for {', '.join(GATED)}")
        for name in GATED:
            self.gates[name].check(where, f"export.gates.{name}")


@dataclass
class ExportParams(Params):
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
