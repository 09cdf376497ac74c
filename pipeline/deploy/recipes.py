"""The registry of reduced-precision variants: how each precision is made, as candidates the export
sequencer times, selects among and gates (pipeline/deploy/export.py). fp32 is the reference every
other variant is judged against, and is made by the sequencer itself."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.export import FakeQuantParity, QatSummary, Sensitivity
from pipeline.deploy import onnx_runtime, qat
from pipeline.deploy.convert import export_fp16, export_int8, export_int8_cpu, export_qdq
from pipeline.deploy.judge import ExportError
from pipeline.deploy.quantize import Failed, input_sources, layer_nodes


@dataclass(frozen=True)
class Inputs:
    """What every recipe gets: the FP32 file, calibration images (training split), metadata, how many
    layers the INT8 fallback may keep in FP32, the quantization-aware student (made on first use,
    shared by both INT8 variants; None: post-training quantization only), and the layers ranked by
    INT8 sensitivity (measured on first use, shared; None: no fallback)."""

    fp32: Path
    calibration: np.ndarray
    meta: Deployable
    fallback_layers: int
    opset: int = 18
    student: Callable[[], qat.Student] | None = None
    ranking: Callable[[], list[Sensitivity]] | None = None


@dataclass(frozen=True)
class Candidate:
    """One file a recipe made, in a scratch folder, and how."""

    label: str  # e.g. "QOperator/MinMax"; "" for a variant's only candidate
    path: Path
    format: str | None = None
    calibration: str | None = None
    qat: QatSummary | None = None
    parity_vs_fake_quant: FakeQuantParity | None = None
    failed: dict[str, str] = field(default_factory=dict)  # formats ONNX Runtime could not make, and why
    kept_in_fp32: tuple[str, ...] = ()
    inputs_in_fp32: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    """How one precision is made: `candidates` writes each candidate into a scratch folder (the fastest
    is kept); `keep_fp32`, when that one falls short on the selection images, writes it again with the
    given layers in FP32 (the fallback asks for the fewest that meet the rule). `runs_here`: the file
    deploys on this machine's ONNX Runtime, so its speed here is its speed (int8_cpu, not TensorRT's)."""

    candidates: Callable[[Inputs, Path], Iterator[Candidate]]
    keep_fp32: Callable[[Inputs, Path, Candidate, tuple[str, ...]], Candidate] | None = None
    calibrated: bool = False
    runs_here: bool = False


def _fp16(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "fp16.onnx"
    export_fp16(inputs.fp32, path, inputs.meta)
    yield Candidate("", path)


def _int8(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "int8.onnx"
    if inputs.student is None:
        export_int8(inputs.fp32, path, inputs.calibration, inputs.meta)
        yield Candidate("", path)
        return
    student = inputs.student()
    export_qdq(student.model, path, inputs.opset, inputs.meta)
    sess = onnx_runtime.session(path)
    parity = qat.parity(student.model, lambda x: onnx_runtime.run(sess, x), inputs.calibration)
    yield Candidate("QAT", path, qat=student.log.summary(), parity_vs_fake_quant=parity)


def _int8_keep(inputs: Inputs, scratch: Path, failed: Candidate, layers: tuple[str, ...]) -> Candidate:
    """ModelOpt's post-training quantization of the FP32 file with `layers` left in FP32."""
    nodes = layer_nodes(onnx.load(str(inputs.fp32)))
    path = scratch / f"int8-fp32-{len(layers)}.onnx"
    export_int8(inputs.fp32, path, inputs.calibration, inputs.meta, exclude=tuple(nodes[name] for name in layers))
    return Candidate(f"{len(layers)} layers in FP32", path, kept_in_fp32=layers)


def _int8_cpu(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    """ONNX Runtime's static quantization, in each format, of the QAT weights (else the FP32 file)."""
    student = inputs.student() if inputs.student is not None else None
    source = inputs.fp32 if student is None or student.fp32 is None else student.fp32
    summary = student.log.summary() if student is not None else None
    made = export_int8_cpu(source, scratch, inputs.calibration, inputs.meta)
    failed = {f"{fmt}/{method}": out.reason for (fmt, method), out in made.items() if isinstance(out, Failed)}
    if len(failed) == len(made):
        raise ExportError(f"ONNX Runtime could not quantize {source} in any format: {failed}")
    for (fmt, method), path in made.items():
        if isinstance(path, Path):  # a format ONNX Runtime failed on is recorded beside the ones it made
            yield Candidate(f"{fmt}/{method}", path, fmt, method, qat=summary, failed=failed)


def _int8_cpu_keep(inputs: Inputs, scratch: Path, failed: Candidate, layers: tuple[str, ...]) -> Candidate:
    """The fastest candidate's format and calibration on the FP32 file, with `layers` left in FP32."""
    assert failed.format is not None and failed.calibration is not None
    setting = (failed.format, failed.calibration)
    path = export_int8_cpu(inputs.fp32, scratch, inputs.calibration, inputs.meta, (setting,), layers)[setting]
    if isinstance(path, Failed):
        why = path.reason
        raise ExportError(f"ONNX Runtime could not quantize {inputs.fp32} with {len(layers)} layers in FP32: {why}")
    graph = onnx.load(str(inputs.fp32))
    names = {node: layer for layer, node in layer_nodes(graph).items()}
    sources = tuple(names.get(n, n) for n in input_sources(graph, layers))
    label = f"{failed.label}, {len(layers)} layers in FP32"
    return Candidate(label, path, *setting, kept_in_fp32=layers, inputs_in_fp32=sources)


#: precision -> its recipe
RECIPES: dict[str, Recipe] = {
    "fp16": Recipe(_fp16),
    "int8": Recipe(_int8, keep_fp32=_int8_keep, calibrated=True),
    "int8_cpu": Recipe(_int8_cpu, keep_fp32=_int8_cpu_keep, calibrated=True, runs_here=True),
}
