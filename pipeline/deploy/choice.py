"""What ships, decided in one place, per target: which ONNX variant the GPU engine is built from,
which backend's per-class results stand for the deployed model, and what to deploy on a CPU and on
a GPU (the report only formats it). Every choice is made on measured numbers and the gates' verdicts."""

from __future__ import annotations

from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.runtime import RuntimeChoice
from pipeline.artifacts.scores import BackendScore, Measured, Recommendation
from pipeline.core.errors import PipelineError

#: the more precise variant an engine falls back to when its precision was rejected by its gate
FALLBACK = {"int8": "fp16", "fp16": "fp32"}
CPU, GPU = "CPU", "GPU (TensorRT)"


class ChoiceError(PipelineError, RuntimeError):
    pass


def engine_precision(wanted: str, export: ExportReport) -> tuple[str, str | None]:
    """`wanted`, or the next more precise variant whose gate passed; and why it fell back."""
    precision, notes = wanted, []
    while not export.usable(precision):
        notes.append(f"{precision} was {'rejected by its gate' if precision in export.variants else 'not exported'}")
        if precision not in FALLBACK:
            raise ChoiceError(f"no ONNX variant passed its gate ({'; '.join(notes)}); see reports/export.json")
        precision = FALLBACK[precision]
    return precision, (f"{'; '.join(notes)}: built from {precision} instead" if notes else None)


def per_class_backend(backends: list[str]) -> str:
    """The backend whose per-class results stand for what ships: the engine where it was built and
    runs here, else ONNX Runtime FP32, else PyTorch."""
    engines = [name for name in backends if name.startswith("tensorrt-")]
    return engines[0] if engines else ("onnxruntime-fp32" if "onnxruntime-fp32" in backends else "pytorch")


def cpu_recommendation(backends: list[BackendScore], runtime: RuntimeChoice) -> Recommendation:
    """On a CPU, what reports/runtime.json chose (the fastest candidate that passed its gate, measured
    on that CPU), with its test top-1 from the score table."""
    shipped, fp32 = runtime.shipped, runtime.candidate("onnxruntime-fp32")
    scored = {r.backend: r for r in backends}
    row, reference = scored.get(shipped.name), scored.get(fp32.name)
    assert shipped.throughput and shipped.p50_ms and fp32.throughput and fp32.p50_ms, "a usable candidate was timed"
    measured = Measured(
        shipped.name,
        shipped.throughput,
        shipped.throughput / fp32.throughput,
        shipped.p50_ms,
        shipped.p50_ms / fp32.p50_ms,
        row.top1 if row else float("nan"),
        row.top1_ci95 if row else (float("nan"), float("nan")),
        reference.top1 if reference else float("nan"),
    )
    return Recommendation(
        CPU, shipped.graph, shipped.precision, True, measured, runtime=f"{shipped.device} ({runtime.cpu})"
    )


def recommend(
    backends: list[BackendScore], export: ExportReport, engine: EngineInfo | None, runtime: RuntimeChoice | None
) -> list[Recommendation]:
    """On a CPU, the runtime stage's choice; on a GPU, the engine, or the variant to build it from on the target."""
    out = [cpu_recommendation(backends, runtime)] if runtime is not None else []
    if engine is not None and engine.built and engine.gpu is not None:
        gpu = f"TensorRT {engine.tensorrt}, {engine.gpu.name}, compute capability {engine.gpu.compute_capability}"
        out.append(
            Recommendation(
                GPU, "models/engine/model.engine", engine.precision, True, engine=gpu, fallback=engine.fallback
            )
        )
    else:
        precision = engine.precision if engine else "int8"
        wanted = export.variants.get(precision)
        out.append(
            Recommendation(
                GPU,
                wanted.file if wanted else "models/onnx/",
                precision,
                False,
                gate=wanted.status if wanted else "not run",
                reason=engine.reason if engine else "engine.json not found",
                fallback=engine.fallback if engine else None,
            )
        )
    return out
