"""The CPU runtimes, as runners (Polygraphy's shape, pipeline/deploy/runners.py's `Backend`): ONNX
Runtime and OpenVINO, each opening an ONNX file with the machine's threads, set once
(`pipeline.core.machine.threads`). A runtime that is missing or cannot read a graph raises
`RuntimeUnavailable` with a one-line reason; the choice records it and goes on without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.machine import threads
from pipeline.deploy.runners import Backend, onnx_backend

#: OpenVINO streams: one inference at a time, on every thread (batch-1 latency and batch throughput both
#: come from one request; the THROUGHPUT hint's two streams measured the same img/s at batch 32 here)
STREAMS = 1


class RuntimeUnavailable(PipelineError, RuntimeError):
    """A runtime not installed, or one that cannot read this graph."""


def onnxruntime(name: str, path: Path) -> Backend:
    try:
        return onnx_backend(name, path, "cpu")
    except PipelineError as e:
        raise RuntimeUnavailable(str(e)) from e


def openvino(name: str, path: Path, hint: str | None = None) -> Backend:
    """`path` compiled by OpenVINO for the CPU with a latency hint, `threads()` threads, `STREAMS` stream
    and, where given, an inference precision hint ("f32" | "bf16"; None: OpenVINO's default for this CPU,
    bf16 where the CPU computes it natively). The device string says what really runs."""
    try:
        import openvino as ov
    except ImportError as e:
        raise RuntimeUnavailable(f"OpenVINO is not installed ({e}); `pip install openvino`") from e
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads(), "NUM_STREAMS": STREAMS}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    try:
        compiled = ov.Core().compile_model(str(path), "CPU", config)
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses for unreadable graphs
        raise RuntimeUnavailable(f"OpenVINO cannot run {path}: {str(e).strip().splitlines()[0][:200]}") from e
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(request.infer([np.ascontiguousarray(images, dtype=np.float32)])[output], dtype=np.float32)

    arithmetic = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16" | "f32"
    return Backend(name, run, Path(path), f"OpenVINO {ov.__version__.split('-')[0]} CPU, {arithmetic}")
