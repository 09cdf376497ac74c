"""The Triton model repository: every config.pbtxt parses under Triton's own schema
(tritonclient's model_config_pb2) and agrees with the ONNX model and engine.json.

No Triton server runs here: the server ships in NGC's containers (no Docker engine on this
machine), and PyPI's `tritonserver` 0.0.1.dev0 installs nothing (docs/deploy.md). The TensorRT engine is a
stand-in file: TensorRT cannot be installed here (its plan is copied, never parsed).
"""

from __future__ import annotations

import onnx
import pytest
from google.protobuf import text_format

from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.triton import ClientGuide
from pipeline.serve.triton import FUSED_MODEL, INT8_MODEL, ONNX_MODEL, TRT_MODEL, build_repository, write_repository

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
DT = model_config_pb2.DataType
KIND = model_config_pb2.ModelInstanceGroup.Kind


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def info(built: bool, profile=(1, 8, 32), **fields) -> EngineInfo:
    """engine.json as the engine stage writes it (the builder itself cannot run here)."""
    base = {
        "built": built,
        "precision": "fp16",
        "requested_precision": "fp16",
        "profile": dict(zip(("min", "opt", "max"), profile)),
        "onnx": "models/onnx/model.fp16.onnx",
        "classes": ["a", "b", "c"],
        "preprocess": {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    if built:
        base |= {
            "tensorrt": "10.13.0",
            "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"},
            "input": {"name": "input", "shape": [-1, 3, 32, 32]},
            "output": {"name": "logits", "shape": [-1, 3]},
        }
    else:
        base["reason"] = "TensorRT is not installed"
    return EngineInfo.from_json(base | fields)


def not_built() -> EngineInfo:
    return info(False)


def test_onnx_model_config_matches_the_onnx_graph(tmp_path, exported):
    onnx_path = exported / "models/onnx/model.onnx"
    client = write_repository(tmp_path / "triton", onnx_path, not_built(), tmp_path / "none.engine")
    folder = tmp_path / "triton" / ONNX_MODEL
    config = parse(folder / "config.pbtxt")
    graph = onnx.load(str(onnx_path)).graph
    assert config.name == ONNX_MODEL and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 32 and list(config.dynamic_batching.preferred_batch_size) == [8, 32]
    (inp,), (out,) = config.input, config.output
    assert inp.name == graph.input[0].name == "input" and inp.data_type == DT.TYPE_FP32
    assert list(inp.dims) == [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 32, 32]
    assert out.name == graph.output[0].name == "logits" and list(out.dims) == [3]
    assert out.label_filename == "labels.txt" and (folder / "labels.txt").read_text().split() == ["a", "b", "c"]
    assert config.instance_group[0].kind == KIND.KIND_CPU
    assert (folder / "1/model.onnx").read_bytes() == onnx_path.read_bytes()
    assert not (tmp_path / "triton" / TRT_MODEL).exists()
    saved = ClientGuide.load(tmp_path / "triton/preprocess.json")
    assert saved == client and saved.preprocess.crop == 32 and saved.models == [ONNX_MODEL]
    assert saved.tensorrt_not_served is not None and "TensorRT is not installed" in saved.tensorrt_not_served


def test_tensorrt_model_config_matches_engine_json(tmp_path, exported):
    """A built engine (stand-in bytes: TensorRT's builder cannot run here) is served as a plan."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"PLAN")
    built = info(True, profile=(1, 4, 16))
    write_repository(tmp_path / "triton", exported / "models/onnx/model.onnx", built, engine)
    folder = tmp_path / "triton" / TRT_MODEL
    config = parse(folder / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.default_model_filename == "model.plan"
    assert config.max_batch_size == 16 and list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert list(config.input[0].dims) == [3, 32, 32] and list(config.output[0].dims) == [3]
    assert config.instance_group[0].kind == KIND.KIND_GPU and (folder / "1/model.plan").read_bytes() == b"PLAN"
    assert parse(tmp_path / "triton" / ONNX_MODEL / "config.pbtxt").max_batch_size == 16
    needs = ClientGuide.load(tmp_path / "triton/preprocess.json").tensorrt_plan_needs
    assert (
        needs is not None
        and needs.startswith("TensorRT 10.13.0 exactly")
        and "Triton Inference Server container" in needs
    )


def test_fused_preprocessing_model_takes_uint8_nhwc(tmp_path, exported):
    fused = exported / "models/onnx/model.uint8.onnx"
    client = write_repository(
        tmp_path / "triton", exported / "models/onnx/model.onnx", not_built(), tmp_path / "e", fused
    )
    config = parse(tmp_path / "triton" / FUSED_MODEL / "config.pbtxt")
    (inp,) = config.input
    assert inp.name == "images" and inp.data_type == DT.TYPE_UINT8 and list(inp.dims) == [32, 32, 3]
    assert client.models == [ONNX_MODEL, FUSED_MODEL] and client.fused_input is not None
    assert client.fused_input.shape == ["batch", 32, 32, 3]


def test_the_repository_is_replaced_whole(tmp_path, exported):
    """A second run drops a TensorRT model that is no longer built."""
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"PLAN")
    built = info(True)
    write_repository(tmp_path / "triton", exported / "models/onnx/model.onnx", built, engine)
    write_repository(tmp_path / "triton", exported / "models/onnx/model.onnx", not_built(), engine)
    assert sorted(p.name for p in (tmp_path / "triton").iterdir()) == [ONNX_MODEL, "preprocess.json"]


def test_the_gated_cpu_int8_model_is_served_beside_fp32(tmp_path, exported):
    """The int8_cpu variant that passed its gate is served on ONNX Runtime's CPU instances, its config
    from its own graph; a variant the gate rejected left no file, and nothing is served for it."""
    int8 = exported / "models/onnx/model.int8_cpu.onnx"
    not_built().save(tmp_path / "engine.json")
    client = build_repository(
        tmp_path / "triton", exported / "models/onnx/model.onnx", tmp_path / "engine.json", tmp_path / "e", None, int8
    )
    folder = tmp_path / "triton" / INT8_MODEL
    config = parse(folder / "config.pbtxt")
    assert config.name == INT8_MODEL and config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == KIND.KIND_CPU and config.max_batch_size == 32
    assert list(config.input[0].dims) == [3, 32, 32] and config.input[0].data_type == DT.TYPE_FP32
    assert (folder / "1/model.onnx").read_bytes() == int8.read_bytes()
    assert any(n.op_type in ("QLinearConv", "QuantizeLinear") for n in onnx.load(str(int8)).graph.node)
    assert client.models == [ONNX_MODEL, INT8_MODEL]

    rejected = tmp_path / "gone" / "model.int8_cpu.onnx"  # what a rejected variant leaves: nothing
    client = build_repository(
        tmp_path / "triton",
        exported / "models/onnx/model.onnx",
        tmp_path / "engine.json",
        tmp_path / "e",
        None,
        rejected,
    )
    assert client.models == [ONNX_MODEL] and not (tmp_path / "triton" / INT8_MODEL).exists()
