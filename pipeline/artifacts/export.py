"""export: reports/export.json, every ONNX variant with its gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pipeline.artifacts.base import Artifact


@dataclass(frozen=True)
class GateResult:
    """A variant against FP32 on images training never saw (`passed` decides), with 95% intervals and
    the image count; test numbers beside, reported only."""

    passed: bool
    rule: str  # the accuracy rule and its source (MLPerf Inference)
    min_top1_ratio: float
    min_agreement: float  # a floor against broken quantization, not the accuracy rule
    images: int  # the gate's images: validation, plus the embedded set's held-out gate images
    top1: float
    top1_fp32: float
    top1_ratio: float  # top1 / top1_fp32: what the rule decides on
    top1_drop: float
    top1_drop_ci95: tuple[float, float]  # paired difference; exact bound when no image changed class
    agreement: float
    agreement_ci95: tuple[float, float]  # Wilson (scipy)
    test_top1: float
    test_agreement: float
    max_abs_diff_vs_fp32: float


Status = Literal["reference", "passed", "rejected"]


@dataclass(frozen=True)
class Variant:
    """One ONNX variant: its file (deleted when rejected), verdict and numbers. `details` holds what
    only the report prints (int8_cpu's candidates, the INT8 repair, FP32's parity)."""

    precision: str
    file: str
    status: Status
    test_top1: float
    provider: str = ""
    gate: GateResult | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def deployable(self) -> bool:
        return self.status != "rejected"


@dataclass(frozen=True)
class ExportReport(Artifact):
    STAGE: ClassVar[str] = "export"
    decided_on: str  # which split and which FP32 reference the gates were decided on
    variants: dict[str, Variant]  # precision -> result, in export order
    fused_preprocess: dict[str, Any] | None = None

    def deployable(self, precision: str) -> bool:
        """Exported and not rejected: FP32 (the reference) or a variant that passed its gate."""
        v = self.variants.get(precision)
        return v is not None and v.deployable
