"""The engine stage. TensorRT cannot run without an NVIDIA GPU, so its builder is the one
thing replaced by a fake here: FakeTensorRT records the calls the build makes, and the
checks below hold the build to the TensorRT 10.12+/11 strongly typed API."""

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

import pipeline.deploy.engine as engine_lib
from pipeline.artifacts.engine import EngineInfo
from pipeline.config.params import load_config
from pipeline.deploy.engine import EngineError, EngineRunner
from stages import engine as engine_stage


class FakeTensorRT:
    """Stands in for `tensorrt` (which needs a GPU); records every builder call."""

    __version__ = "10.13.0"

    def __init__(self):
        self.calls = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class NetworkDefinitionCreationFlag:
            STRONGLY_TYPED = 1

        class MemoryPoolType:
            WORKSPACE = "WORKSPACE"

        class HardwareCompatibilityLevel:
            AMPERE_PLUS = "AMPERE_PLUS"
            SAME_COMPUTE_CAPABILITY = "SAME_COMPUTE_CAPABILITY"

        class BuilderFlag:
            VERSION_COMPATIBLE = "VERSION_COMPATIBLE"

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            def __init__(self):
                self.inputs, self.outputs = [], []

            def get_input(self, i):
                return self.inputs[i]

            def get_output(self, i):
                return self.outputs[i]

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.errors = network, []

            def parse(self, data):
                try:
                    graph = onnx.load_from_string(data).graph
                except Exception as e:
                    self.errors.append(str(e))
                    return False
                dims = lambda v: tuple(d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim)
                self.network.inputs = [Tensor(v.name, dims(v)) for v in graph.input]
                self.network.outputs = [Tensor(v.name, dims(v)) for v in graph.output]
                return True

            @property
            def num_errors(self):
                return len(self.errors)

            def get_error(self, i):
                return self.errors[i]

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return self.data + b"+timings"

        class Profile:
            def set_shape(self, name, mn, opt, mx):
                fake.calls.append(("set_shape", name, mn, opt, mx))

        class Config:
            def __init__(self):
                self.cache = None

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("set_memory_pool_limit", pool, size))

            def __setattr__(self, name, value):
                if name in ("builder_optimization_level", "hardware_compatibility_level"):
                    fake.calls.append((name, value))
                object.__setattr__(self, name, value)

            def add_optimization_profile(self, profile):
                fake.calls.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache
                fake.calls.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

            def set_flag(self, flag):
                fake.calls.append(("set_flag", flag))  # precision flags are not allowed: asserted absent

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build_serialized_network",))
                return b"FAKE-ENGINE"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag, self.MemoryPoolType = NetworkDefinitionCreationFlag, MemoryPoolType
        self.HardwareCompatibilityLevel, self.BuilderFlag = HardwareCompatibilityLevel, BuilderFlag


GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture
def workspace(tmp_path, exported, monkeypatch):
    shutil.copytree(exported / "models", tmp_path / "models")
    shutil.copytree(exported / "reports", tmp_path / "reports")
    shutil.copy(exported / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def calls(fake, name):
    return [c for c in fake.calls if c[0] == name]


def test_auto_without_tensorrt_records_why_and_succeeds(workspace):
    result = CliRunner().invoke(engine_stage.command, [])
    assert result.exit_code == 0, result.output
    info = json.loads((workspace / "models/engine/engine.json").read_text())
    assert info["built"] is False and ("TensorRT is not installed" in info["reason"] or "no CUDA GPU" in info["reason"])
    assert info["classes"] == ["a", "b", "c"] and not (workspace / "models/engine/model.engine").exists()


def test_required_true_fails_with_the_reason(workspace):
    params = (workspace / "params.yaml").read_text().replace("required: auto", "required: 'true'")
    (workspace / "params.yaml").write_text(params)
    result = CliRunner().invoke(engine_stage.command, [])
    assert result.exit_code == 1 and "engine.required is true but the engine cannot be built here" in result.output


def test_strongly_typed_build_with_profile_workspace_level_and_timing_cache(workspace, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine_lib, "tensorrt_or_reason", lambda: (fake, None))
    monkeypatch.setattr(engine_lib, "gpu_info", lambda: GPU)
    result = CliRunner().invoke(engine_stage.command, [])
    assert result.exit_code == 0, result.output

    assert calls(fake, "create_network") == [("create_network", 1 << 1)]  # STRONGLY_TYPED
    assert not calls(fake, "set_flag")  # precision comes from the ONNX graph, never from builder flags
    assert calls(fake, "set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 4096 << 20)]
    assert calls(fake, "builder_optimization_level") == [("builder_optimization_level", 3)]
    assert calls(fake, "set_shape") == [("set_shape", "input", (1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))]
    assert calls(fake, "create_timing_cache") == [("create_timing_cache", b"")]
    assert (workspace / "models/engine/model.engine").read_bytes() == b"FAKE-ENGINE"
    assert (workspace / "models/timing-cache/timing.cache").read_bytes() == b"+timings"

    info = json.loads((workspace / "models/engine/engine.json").read_text())
    # engine.precision's default: the every-layer INT8 QDQ graph, built strongly typed (its gate passed here)
    assert info["built"] and info["tensorrt"] == "10.13.0" and info["gpu"] == GPU and info["precision"] == "int8"
    assert info["onnx"].endswith("model.int8.onnx") and len(info["onnx_sha256"]) == 64 and info["fallback"] is None
    assert info["compatibility"] == {"hardware": "none", "version_compatible": False}
    assert not calls(fake, "hardware_compatibility_level")
    assert info["input"] == {"name": "input", "shape": [-1, 3, 32, 32]} and info["output"]["name"] == "logits"
    assert info["profile"] == {"min": 1, "opt": 8, "max": 8}  # batch sizes, built or not (one shape)

    fake.calls.clear()  # a second build starts from the kept timing cache
    assert CliRunner().invoke(engine_stage.command, []).exit_code == 0
    assert calls(fake, "create_timing_cache") == [("create_timing_cache", b"+timings")]


def test_unparseable_onnx_is_reported(workspace, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine_lib, "tensorrt_or_reason", lambda: (fake, None))
    bad = workspace / "bad.onnx"
    bad.write_bytes(b"\x08junk")
    cfg = load_config("params.yaml")
    with pytest.raises(EngineError, match="bad.onnx: TensorRT cannot parse it"):
        engine_lib.build(fake, bad, workspace / "e.engine", workspace / "t.cache", cfg.engine)
    assert not (workspace / "e.engine").exists()


def test_compatibility_settings_reach_the_builder_and_engine_json(workspace, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine_lib, "tensorrt_or_reason", lambda: (fake, None))
    monkeypatch.setattr(engine_lib, "gpu_info", lambda: GPU)
    params = (workspace / "params.yaml").read_text()
    params = params.replace("hardware_compatibility: none", "hardware_compatibility: ampere_plus")
    params = params.replace("version_compatible: false", "version_compatible: true")
    (workspace / "params.yaml").write_text(params)
    assert CliRunner().invoke(engine_stage.command, []).exit_code == 0
    assert calls(fake, "hardware_compatibility_level") == [("hardware_compatibility_level", "AMPERE_PLUS")]
    assert calls(fake, "set_flag") == [("set_flag", "VERSION_COMPATIBLE")]  # the only flag: no precision flags
    info = json.loads((workspace / "models/engine/engine.json").read_text())
    assert info["compatibility"] == {"hardware": "ampere_plus", "version_compatible": True}


def test_rejected_precision_falls_back_to_the_next_that_passed(workspace, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine_lib, "tensorrt_or_reason", lambda: (fake, None))
    monkeypatch.setattr(engine_lib, "gpu_info", lambda: GPU)
    report = json.loads((workspace / "reports/export.json").read_text())
    report["variants"]["fp16"]["status"] = "rejected"  # as export writes it when the gate fails
    (workspace / "reports/export.json").write_text(json.dumps(report))
    assert "precision: int8" in (workspace / "params.yaml").read_text()  # the default
    report["variants"]["int8"]["status"] = "rejected"
    (workspace / "reports/export.json").write_text(json.dumps(report))
    result = CliRunner().invoke(engine_stage.command, [])
    assert result.exit_code == 0, result.output
    info = json.loads((workspace / "models/engine/engine.json").read_text())
    assert info["precision"] == "fp32" and info["requested_precision"] == "int8" and info["onnx"].endswith("model.onnx")
    assert "int8 was rejected by its gate; fp16 was rejected by its gate: built from fp32" in info["fallback"]
    assert "built from fp32" in result.output
    # engine.required: true makes a fallback an error, in one line
    params = (workspace / "params.yaml").read_text().replace("required: auto", "required: 'true'")
    (workspace / "params.yaml").write_text(params)
    result = CliRunner().invoke(engine_stage.command, [])
    assert result.exit_code == 1 and "engine.precision int8 cannot be deployed" in result.output


GPU_SAME_CC = {"name": "NVIDIA H100 PCIe", "compute_capability": "9.0"}
GPU_OLDER = {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}
GPU_TURING = {"name": "Tesla T4", "compute_capability": "7.5"}


def engine_info(**fields) -> EngineInfo:
    """engine.json of a built engine, as the engine stage writes it, with `fields` set."""
    base = {
        "built": True,
        "precision": "fp16",
        "requested_precision": "fp16",
        "profile": {"min": 1, "opt": 8, "max": 32},
        "onnx": "models/onnx/model.fp16.onnx",
        "classes": ["a", "b", "c"],
        "preprocess": {"resize": 36, "crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    return EngineInfo.from_json(base | fields)


@pytest.mark.parametrize(
    "compat,trt_here,gpu_here,refused",
    [
        ({}, "10.13.0", GPU_SAME_CC, None),  # another name, same compute capability: runs
        ({}, "10.13.0", GPU_OLDER, "built for compute capability '9.0' but this GPU has '8.0'"),
        ({}, "11.0.0", GPU, "built for tensorrt '10.13.0' but this machine has '11.0.0'"),
        ({"hardware": "ampere_plus"}, "10.13.0", GPU_OLDER, None),
        ({"hardware": "ampere_plus"}, "10.13.0", GPU_TURING, "needs compute capability >= 8.0"),
        ({"hardware": "same_compute_capability"}, "10.13.0", GPU_OLDER, "compute capability '9.0'"),
        ({"version_compatible": True}, "10.14.1", GPU, None),
        ({"version_compatible": True}, "10.12.0", GPU, "needs TensorRT 10.x >= 10.13.0"),
        ({"version_compatible": True}, "11.0.0", GPU, "needs TensorRT 10.x >= 10.13.0"),
    ],
)
def test_runner_check_uses_compute_capability_and_compatibility(compat, trt_here, gpu_here, refused):
    info = engine_info(tensorrt="10.13.0", gpu=GPU, compatibility=compat)
    why = engine_lib.why_not_here(info, trt_here, gpu_here)
    assert why is None if refused is None else refused in why


def test_engine_from_another_machine_is_refused(workspace, monkeypatch):
    fake = FakeTensorRT()
    monkeypatch.setattr(engine_lib, "tensorrt_or_reason", lambda: (fake, None))
    info = workspace / "engine.json"
    input_, output = {"name": "input", "shape": [-1, 3, 32, 32]}, {"name": "logits", "shape": [-1, 3]}
    engine_info(tensorrt="10.13.0", gpu=GPU, input=input_, output=output).save(info)
    monkeypatch.setattr(engine_lib, "gpu_info", lambda: GPU_OLDER)
    with pytest.raises(EngineError, match=r"built for compute capability '9.0' but this GPU has '8.0'.*rebuild"):
        EngineRunner(workspace / "model.engine", info)
    monkeypatch.setattr(engine_lib, "gpu_info", lambda: GPU)
    fake.__version__ = "11.0.0"
    with pytest.raises(EngineError, match=r"built for tensorrt '10.13.0' but this machine has '11.0.0'.*rebuild"):
        EngineRunner(workspace / "model.engine", info)
