"""The registry of CPU candidates: runtime x graph x precision hint. Each one is gated by the rule of
the ONNX variant whose arithmetic it shares (its own arithmetic, so its own gate run), and timed.

OpenVINO cannot read ONNX Runtime's QOperator graph (model.int8_cpu.onnx) and ONNX Runtime runs the QDQ
graph made for TensorRT (model.int8.onnx) at about half FP32's speed (reports/report.md), so neither pairing
is a candidate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.deploy.runners import Backend
from pipeline.serve import runtimes


@dataclass(frozen=True)
class Candidate:
    name: str
    runtime: str  # onnxruntime | openvino
    precision: str  # the ONNX variant it runs (pipeline/core/paths.py's ONNX table)
    hint: str | None  # OpenVINO's inference precision hint
    gate: str | None  # which export.gates entry decides it; None: the FP32 reference itself

    def open(self, path: Path) -> Backend:
        """The runner; RuntimeUnavailable when the runtime is missing or cannot read `path`."""
        if self.runtime == "openvino":
            return runtimes.openvino(self.name, path, self.hint)
        return runtimes.onnxruntime(self.name, path)


#: in the report's order; ONNX Runtime FP32 is the reference every other candidate is gated against
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("onnxruntime-fp32", "onnxruntime", "fp32", None, None),
    Candidate("onnxruntime-int8_cpu", "onnxruntime", "int8_cpu", None, "int8_cpu"),
    # the QDQ graph TensorRT builds from: every Conv INT8; what it keeps in float runs in OpenVINO's default
    Candidate("openvino-int8", "openvino", "int8", None, "int8"),
    # the FP32 graph in bf16 (AMX or AVX512-BF16 where the CPU has them): a deploy without INT8; gated as fp16 is
    Candidate("openvino-bf16", "openvino", "fp32", "bf16", "fp16"),
)


def candidate(name: str) -> Candidate:
    return next(c for c in CANDIDATES if c.name == name)
