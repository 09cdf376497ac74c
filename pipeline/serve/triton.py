"""The Triton model repository for NGC's container (models/triton), from the exported artifacts.

`tritonserver --model-repository=models/triton` in NGC's Triton container loads it as it is:

- `lio_onnx`: the FP32 ONNX model on the `onnxruntime_onnx` platform, CPU instances, so the
  repository also serves on a CPU-only Triton;
- `lio_onnx_int8`: the gated `int8_cpu` model (ONNX Runtime's INT8 kernels), CPU instances, when it
  passed its gate: the report's recommendation for a CPU server;
- `lio_tensorrt`: the TensorRT engine as a `tensorrt_plan`, GPU instances, when it was built
  (Triton's TensorRT backend must be of the TensorRT version in engine.json);
- `lio_openvino`: the graph of the OpenVINO candidate reports/runtime.json chose or passed (OpenVINO
  backend, CPU instances, the machine's threads);
- `lio` and `lio_preprocess`: encoded image bytes in, labelled probabilities out, in front of the
  native model of the CPU runtime reports/runtime.json chose (pipeline/serve/repository.py; the
  Python backend needs this project and numpy < 2 in its environment, docs/deploy.md).

Every `config.pbtxt` is filled from the artifacts' own metadata: tensor names, dtypes and
dims from the ONNX graph (or engine.json), `max_batch_size` and dynamic batching from the
engine profile, and `labels.txt` (the class names) for Triton's classification extension.
`preprocess.json` says what a client must do to an image before sending it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.runtime import CpuCandidate, RuntimeChoice
from pipeline.artifacts.triton import BytesInput, ClientGuide, FusedInput, Output, Tensor
from pipeline.core.errors import ArtifactError
from pipeline.core.io import atomic_dir
from pipeline.core.machine import threads
from pipeline.core.paths import require
from pipeline.deploy.onnx_runtime import read_meta
from pipeline.serve.repository import ENSEMBLE, IMAGE, LOGITS, PREPROCESS, write_front

ONNX_MODEL, INT8_MODEL, TRT_MODEL, FUSED_MODEL = "lio_onnx", "lio_onnx_int8", "lio_tensorrt", "lio_onnx_uint8"
OPENVINO_MODEL = "lio_openvino"
GUIDE = "preprocess.json"  # the repository's summary for a client (ClientGuide)
#: ONNX TensorProto element types -> Triton data types
TRITON_TYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
}


def tensor_spec(value: onnx.ValueInfoProto) -> tuple[str, str, list[int]]:
    """(name, Triton data type, dims without the batch axis) of a graph input or output."""
    t = value.type.tensor_type
    if t.elem_type not in TRITON_TYPES:
        raise ArtifactError(f"tensor {value.name!r}: element type {t.elem_type} has no Triton mapping here")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return value.name, TRITON_TYPES[t.elem_type], dims[1:]


def config_text(
    name: str,
    platform: str,
    max_batch: int,
    preferred: list[int],
    inputs: list[tuple[str, str, list[int]]],
    outputs: list[tuple[str, str, list[int]]],
    kind: str,
    model_file: str,
) -> str:
    """One config.pbtxt (protobuf text format of inference.ModelConfig)."""

    def tensors(specs, labels: bool) -> str:
        items = []
        for tensor, dtype, dims in specs:
            label = '\n    label_filename: "labels.txt"' if labels else ""
            shape = ", ".join(map(str, dims))
            items.append(f'  {{\n    name: "{tensor}"\n    data_type: {dtype}\n    dims: [ {shape} ]{label}\n  }}')
        return ",\n".join(items)

    return (
        f'name: "{name}"\nplatform: "{platform}"\ndefault_model_filename: "{model_file}"\n'
        f"max_batch_size: {max_batch}\n"
        f"input [\n{tensors(inputs, False)}\n]\n"
        f"output [\n{tensors(outputs, True)}\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
        f"  max_queue_delay_microseconds: 100\n}}\n"
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]\n"
    )


def build_repository(
    out: Path,
    onnx_path: Path,
    engine_info_path: Path,
    engine_path: Path,
    fused: Path | None = None,
    int8_cpu: Path | None = None,
    runtime: RuntimeChoice | None = None,
) -> ClientGuide:
    """The triton stage: the repository from models/onnx and models/engine (a rejected variant left no
    file, so a file that exists passed its gate), and the CPU runtime chosen here."""
    info = EngineInfo.load(engine_info_path)
    fused = fused if fused is not None and fused.exists() else None
    int8_cpu = int8_cpu if int8_cpu is not None and int8_cpu.exists() else None
    return write_repository(out, require(onnx_path, "export"), info, engine_path, fused, int8_cpu, runtime)


def plan_needs(info: EngineInfo) -> str:
    """Which TensorRT (and so which Triton container) can load the plan, from engine.json."""
    trt, compat = str(info.tensorrt), info.compatibility
    version = (
        f"TensorRT {trt.split('.')[0]}.x, {trt} or later" if compat.version_compatible else f"TensorRT {trt} exactly"
    )
    cc, name = (info.gpu.compute_capability, info.gpu.name) if info.gpu else (None, None)
    hardware = {
        "ampere_plus": "any GPU of compute capability 8.0 or higher (Ampere or later)",
        "same_compute_capability": f"a GPU of compute capability {cc}",
    }.get(compat.hardware, f"a GPU of compute capability {cc} (built on {name})")
    return (
        f"{version}, on {hardware}: serve it from a Triton Inference Server container whose TensorRT backend is "
        "that release (NVIDIA's Frameworks Support Matrix lists the TensorRT version of each Triton container)"
    )


def write_repository(
    out: Path,
    onnx_path: Path,
    engine_info: EngineInfo,
    engine_path: Path,
    fused: Path | None = None,
    int8_cpu: Path | None = None,
    runtime: RuntimeChoice | None = None,
) -> ClientGuide:
    """Writes the repository folder `out` whole (swapped in atomically); returns its preprocess.json."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    meta = read_meta(onnx_path)
    batch = (engine_info.profile.max, sorted({engine_info.profile.opt, engine_info.profile.max}))
    labels = "\n".join(meta.classes) + "\n"
    with atomic_dir(out) as tmp:
        # the ONNX models, each on CPU instances, its config from its own graph; the fused one takes uint8 NHWC
        # (the server scales and normalises, the client only resizes)
        models = {ONNX_MODEL: onnx_path, INT8_MODEL: int8_cpu, FUSED_MODEL: fused}
        served = [name for name, path in models.items() if path is not None]
        for name in served:
            write_onnx(tmp / name, name, models[name], batch, labels)  # type: ignore[arg-type]
        if engine_info.built and engine_info.input is not None and engine_info.output is not None:
            write_plan(tmp / TRT_MODEL, engine_info, engine_path, batch, labels)
            served.append(TRT_MODEL)
        openvino = openvino_candidate(runtime)
        if openvino is not None:
            write_openvino(tmp / OPENVINO_MODEL, openvino, *batch, labels)
            served.append(OPENVINO_MODEL)
        if runtime is not None:  # bytes in, in front of the native model of the runtime chosen for the CPU
            shipped = runtime.shipped
            native = {"openvino": OPENVINO_MODEL}.get(shipped.runtime) or {"int8_cpu": INT8_MODEL}.get(
                shipped.precision, ONNX_MODEL
            )
            tensors = (graph.input[0].name, graph.output[0].name)
            write_front(tmp, native, tensors, meta.preprocess, batch[0], meta.classes)
            served += [ENSEMBLE, PREPROCESS]
        guide = client_guide(served, graph, meta, engine_info, fused is not None, runtime is not None)
        guide.save(tmp / GUIDE)
    return guide


def write_onnx(folder: Path, name: str, path: Path, batch: tuple[int, list[int]], labels: str) -> None:
    graph = onnx.load(str(path), load_external_data=False).graph
    ins, outs = [tensor_spec(v) for v in graph.input], [tensor_spec(v) for v in graph.output]
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(path, folder / "1" / "model.onnx")
    (folder / "config.pbtxt").write_text(
        config_text(name, "onnxruntime_onnx", *batch, ins, outs, "KIND_CPU", "model.onnx")
    )
    (folder / "labels.txt").write_text(labels)


def write_plan(folder: Path, info: EngineInfo, engine: Path, batch: tuple[int, list[int]], labels: str) -> None:
    assert info.input is not None and info.output is not None
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(engine, folder / "1" / "model.plan")
    trt_in = [(info.input.name, "TYPE_FP32", info.input.shape[1:])]
    trt_out = [(info.output.name, "TYPE_FP32", info.output.shape[1:])]
    (folder / "config.pbtxt").write_text(
        config_text(TRT_MODEL, "tensorrt_plan", *batch, trt_in, trt_out, "KIND_GPU", "model.plan")
    )
    (folder / "labels.txt").write_text(labels)


def client_guide(
    served: list[str], graph: onnx.GraphProto, meta: Deployable, engine: EngineInfo, fused: bool, front: bool
) -> ClientGuide:
    """preprocess.json: what a client sends to each model, and what the plan needs."""
    (name, _, dims), output = tensor_spec(graph.input[0]), graph.output[0].name
    spec = meta.preprocess
    return ClientGuide(
        models=served,
        input=Tensor(name, "FP32", ["batch", *dims]),
        output=Output(output, len(meta.classes)),
        preprocess=spec,
        steps=[
            "decode the image as RGB",
            f"resize the shorter side to {spec.resize} (bilinear, antialiased)",
            f"centre-crop {spec.crop} x {spec.crop}",
            "scale to [0, 1], subtract mean and divide by std per channel",
            "lay out as NCHW float32, batch first",
        ],
        client_function="pipeline.deploy.preprocess.preprocess (the pipeline's own, bit for bit)",
        bytes_input=BytesInput(ENSEMBLE, IMAGE, "BYTES", LOGITS, "class_count") if front else None,
        fused_input=FusedInput(
            FUSED_MODEL,
            "UINT8",
            ["batch", spec.crop, spec.crop, 3],
            "pipeline.deploy.preprocess.resize_and_crop (resize and crop only)",
        )
        if fused
        else None,
        tensorrt=engine.tensorrt if engine.built else None,
        tensorrt_plan_needs=plan_needs(engine) if engine.built else None,
        tensorrt_not_served=None if engine.built else engine.reason,
    )


def openvino_candidate(runtime: RuntimeChoice | None) -> CpuCandidate | None:
    """The OpenVINO candidate to serve natively: the chosen one, else the fastest that passed."""
    if runtime is None:
        return None
    passed = [c for c in runtime.candidates if c.runtime == "openvino" and c.usable]
    if runtime.shipped in passed:
        return runtime.shipped
    return max(passed, key=lambda c: c.throughput or 0.0, default=None)


def write_openvino(folder: Path, c: CpuCandidate, max_batch: int, preferred: list[int], labels: str) -> None:
    """OpenVINO backend on the candidate's ONNX graph, CPU instances, the machine's threads and its hint."""
    graph = onnx.load(c.graph, load_external_data=False).graph
    ins, outs = [tensor_spec(v) for v in graph.input], [tensor_spec(v) for v in graph.output]
    (folder / "1").mkdir(parents=True)
    shutil.copyfile(c.graph, folder / "1" / "model.onnx")
    settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": str(threads())}
    if c.hint:
        settings["INFERENCE_PRECISION_HINT"] = c.hint
    text = config_text(OPENVINO_MODEL, "", max_batch, preferred, ins, outs, "KIND_CPU", "model.onnx")
    text = text.replace('platform: ""', 'backend: "openvino"')
    parameters = ",\n".join(
        f'  {{\n    key: "{k}"\n    value: {{ string_value: "{v}" }}\n  }}' for k, v in settings.items()
    )
    (folder / "config.pbtxt").write_text(text + f"parameters [\n{parameters}\n]\n")
    (folder / "labels.txt").write_text(labels)
