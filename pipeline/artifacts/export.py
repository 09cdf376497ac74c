"""export: reports/export.json, every ONNX variant with its gate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

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
    shortfalls: list[str] = field(default_factory=list)  # what it missed the rule by (`Gate.shortfalls`)


Status = Literal["reference", "passed", "rejected"]


@dataclass(frozen=True)
class Parity:
    """Two runs of the same model on the same images: same top-1, logits within a tolerance."""

    images: int
    same_top1: bool
    max_abs_diff: float
    largest_logit: float
    passed: bool


@dataclass(frozen=True)
class FakeQuantParity:
    """An exported QDQ graph against the fake-quantized model it came from."""

    images: int
    same_top1: float  # share of images with the same top-1
    relative_diff: float
    max_abs_diff: float
    largest_logit: float


@dataclass(frozen=True)
class SelectionTry:
    """One candidate against FP32 on the selection images (never a gate image), held to its gate."""

    candidate: str  # e.g. "QDQ/MinMax, 2 layers in FP32"
    kept_in_fp32: list[str]
    images: int
    agreement: float
    top1: float
    top1_fp32: float
    top1_drop: float
    passed: bool
    reason: str | None = None  # why it falls short whatever it scores (a QAT run that did not converge)


@dataclass(frozen=True)
class CandidateSpeed:
    """One way a variant can be made, timed on this machine's CPU when there was a choice."""

    label: str
    format: str | None
    calibration: str | None
    img_s: float
    batch: int


@dataclass(frozen=True)
class Sensitivity:
    layer: str
    error_removed: float  # share of the INT8 logit error that keeping this layer in FP32 removes


@dataclass(frozen=True)
class FallbackSpeed:
    """What the layers kept in FP32 cost in speed, on this CPU, at `batch`."""

    every_layer_int8: float
    shipped: float
    batch: int


@dataclass(frozen=True)
class QatSummary:
    """The quantization-aware fine-tuning, as `pipeline.deploy.qat` logged it."""

    epochs: int
    steps: int
    loss: list[float]
    agreement_before: float
    agreement_after: float
    relative_error_before: float
    relative_error_after: float
    converged: bool


@dataclass(frozen=True)
class Layers:
    """Which Conv and Gemm layers of a graph compute in INT8, read from its nodes
    (`pipeline.deploy.quantize.layer_precision`): the report's sentence about a variant comes from here."""

    int8: int
    total: int
    in_float: list[str]  # "node_linear (Gemm)": the layers that stay in floating point

    def describe(self) -> str:
        if not self.int8:
            return "no layer in INT8"
        if not self.in_float:
            return f"all {self.total} Conv and Gemm layers in INT8"
        return (
            f"{self.int8} of {self.total} Conv and Gemm layers in INT8, in floating point: {', '.join(self.in_float)}"
        )


@dataclass(frozen=True)
class Variant:
    """One ONNX variant: its file (deleted when rejected), verdict and numbers, and how it was made:
    the candidates timed, the selection tries, the layers kept in FP32 and why."""

    precision: str
    file: str
    status: Status
    test_top1: float
    provider: str = ""
    gate: GateResult | None = None
    parity_vs_pytorch: Parity | None = None  # fp32 only
    gate_top1: float | None = None  # fp32 only: its top-1 on the gate images
    calibration_images: int | None = None
    format: str | None = None  # int8_cpu: QDQ | QOperator
    calibration: str | None = None  # int8_cpu: MinMax | Entropy | ...
    qat: QatSummary | None = None
    parity_vs_fake_quant: FakeQuantParity | None = None
    failed: dict[str, str] = field(default_factory=dict)  # candidate -> why ONNX Runtime could not make it
    candidates: list[CandidateSpeed] = field(default_factory=list)
    selection: list[SelectionTry] = field(default_factory=list)
    sensitivity: list[Sensitivity] = field(default_factory=list)
    kept_in_fp32: list[str] = field(default_factory=list)
    inputs_in_fp32: list[str] = field(default_factory=list)
    fallback_speed: FallbackSpeed | None = None
    rejected_because: str | None = None
    layers: Layers | None = None  # INT8 variants: what the shipped graph's nodes compute in INT8

    @property
    def usable(self) -> bool:
        return self.status != "rejected"


@dataclass(frozen=True)
class FusedCheck:
    file: str
    input: str
    parity_vs_fp32: Parity


@dataclass(frozen=True)
class ExportReport(Artifact):
    STAGE: ClassVar[str] = "export"
    decided_on: str  # which split and which FP32 reference the gates were decided on
    variants: dict[str, Variant]  # precision -> result, in export order
    fused_preprocess: FusedCheck | None = None

    def usable(self, precision: str) -> bool:
        """Exported and not rejected: FP32 (the reference) or a variant that passed its gate."""
        v = self.variants.get(precision)
        return v is not None and v.usable
