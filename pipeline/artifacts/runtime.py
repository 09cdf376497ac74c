"""runtime: reports/runtime.json, the CPU runtime chosen on the machine that ran the stage: every
candidate (runtime x graph x precision hint) with its gate and its speed, and which one ships."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pipeline.artifacts.base import Artifact
from pipeline.artifacts.export import GateResult

CandidateStatus = Literal["reference", "passed", "rejected", "unavailable"]


@dataclass(frozen=True)
class CpuCandidate:
    """One way to run the deployed model on this CPU, gated against FP32 and timed."""

    name: str  # e.g. "openvino-int8"
    runtime: Literal["onnxruntime", "openvino"]
    precision: str  # the ONNX variant it runs: fp32 | int8 | int8_cpu
    graph: str  # that variant's file
    hint: str | None  # OpenVINO's inference precision hint asked for (None: its default for this CPU)
    status: CandidateStatus
    device: str | None = None  # what really ran: ONNX Runtime's provider, or OpenVINO's version and arithmetic
    gate: GateResult | None = None  # None for the reference and for an unavailable candidate
    p50_ms: float | None = None  # batch 1
    throughput: float | None = None  # img/s at the choice's `batch`
    reason: str | None = None  # unavailable or rejected: why, in one line

    @property
    def usable(self) -> bool:
        return self.status in ("reference", "passed")


@dataclass(frozen=True)
class RuntimeChoice(Artifact):
    """Every CPU candidate, and the fastest that passed its gate at `batch` on `cpu`."""

    STAGE: ClassVar[str] = "runtime"
    cpu: str  # the CPU's model name
    flags: list[str]  # its instruction sets that matter here (pipeline.core.machine)
    threads: int  # per inference, set once from the machine
    streams: int  # OpenVINO streams (parallel inferences); ONNX Runtime runs one
    batch: int  # the throughput batch: engine.max_batch
    candidates: list[CpuCandidate]
    chosen: str  # the name of the candidate that ships on this CPU
    why: str

    def candidate(self, name: str) -> CpuCandidate:
        return next(c for c in self.candidates if c.name == name)

    @property
    def shipped(self) -> CpuCandidate:
        return self.candidate(self.chosen)

    def made_on(self, cpu: str, flags: list[str]) -> bool:
        """Whether this choice was measured on a CPU of this name and these instruction sets."""
        return self.cpu == cpu and sorted(self.flags) == sorted(flags)


@dataclass(frozen=True)
class LoadLevel:
    """One concurrency level of benchmarks/serve.py: batch-1 requests, each answer checked."""

    model: str  # "lio" (bytes in) | "lio_cpu" (tensor in)
    concurrency: int
    requests: int
    answered: int
    errors: int
    lost: int
    swapped: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    req_s: float
    first_error: str | None = None


@dataclass(frozen=True)
class ServingLoad(Artifact):
    """reports/serving.json: the bundled server under load, beside the same graph and runtime in process."""

    STAGE: ClassVar[str] = "serve"  # written by benchmarks/serve.py, not a DVC stage
    cpu: str
    candidate: str
    in_process_batch8: float  # img/s, the same graph and runtime, no server
    rows: list[LoadLevel]
