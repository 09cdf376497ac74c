"""TensorRT engine build and load, kept thin (docs/method.md, "Precision").

The build is strongly typed: precision comes from the ONNX variant, not builder flags
(TensorRT 11 has none; 10.x deprecates them). Written for the Python API shared by
TensorRT 10.12+ and 11.x. TensorRT needs an NVIDIA GPU: where it or the GPU is missing,
`tensorrt_or_reason` says why, and the stage records that instead of building.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.artifacts.engine import Compatibility, EngineInfo, Gpu, Profile, Tensor
from pipeline.artifacts.export import ExportReport
from pipeline.config.engine import EngineConfig
from pipeline.core import paths
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path, sha256
from pipeline.deploy import onnx_runtime
from pipeline.deploy.choice import engine_precision


class EngineError(PipelineError, RuntimeError):
    pass


def tensorrt_or_reason():
    """(tensorrt module, None) when a build can run here, else (None, why not)."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return None, f"TensorRT is not installed ({e}); on a machine with an NVIDIA GPU run pip install '.[tensorrt]'"
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA GPU is visible, and TensorRT builds for the GPU it runs on"
    return trt, None


def gpu_info() -> dict[str, str]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}


#: engine.hardware_compatibility -> TensorRT's HardwareCompatibilityLevel member
HARDWARE_LEVELS = {"ampere_plus": "AMPERE_PLUS", "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}


@dataclass(frozen=True)
class Built:
    """What a build adds to engine.json."""

    tensorrt: str
    gpu: Gpu
    input: Tensor
    output: Tensor
    onnx_sha256: str
    engine: str

    def fields(self) -> dict:
        """As EngineInfo's keyword arguments (shallow: the values stay typed)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def build(trt, onnx_path: Path, engine_path: Path, cache_path: Path, cfg: EngineConfig) -> Built:
    """Parse, configure (profile, workspace, optimisation level, timing cache, compatibility), build, save."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # always on, and deprecated, in TensorRT 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"{onnx_path}: TensorRT cannot parse it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mib << 20)
    config.builder_optimization_level = cfg.optimization_level
    if cfg.hardware_compatibility != "none":
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, HARDWARE_LEVELS[cfg.hardware_compatibility]
        )
    if cfg.version_compatible:  # a plan later TensorRT releases of the same major version can run
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    inp, out = network.get_input(0), network.get_output(0)
    chw = tuple(inp.shape)[1:]
    shapes = {k: (b, *chw) for k, b in (("min", cfg.min_batch), ("opt", cfg.opt_batch), ("max", cfg.max_batch))}
    profile = builder.create_optimization_profile()
    profile.set_shape(inp.name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(Path(cache_path).read_bytes() if Path(cache_path).exists() else b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Built(
        tensorrt=trt.__version__,
        gpu=Gpu(**gpu_info()),
        input=Tensor(inp.name, list(inp.shape)),
        output=Tensor(out.name, list(out.shape)),
        onnx_sha256=sha256(onnx_path),
        engine=str(engine_path),
    )


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split(".")[:3] if p.isdigit())


def why_not_here(info: EngineInfo, tensorrt: str, gpu: dict) -> str | None:
    """Why an engine described by engine.json cannot run with this TensorRT on this GPU, or None.

    GPUs are compared by compute capability, never by name (an H100 PCIe runs an H100 SXM's plan):
    equal, or >= 8.0 for an Ampere-plus plan. TensorRT must match exactly, unless the plan is
    version compatible: then any release of the same major version, not older than the builder.
    """
    compat = info.compatibility
    built_cc, here_cc = info.gpu.compute_capability if info.gpu else None, gpu.get("compute_capability")
    if compat.hardware == "ampere_plus":
        if _version(here_cc) < (8, 0):
            return f"an Ampere-plus plan needs compute capability >= 8.0, but this GPU has {here_cc}"
    elif built_cc != here_cc:
        return f"built for compute capability {built_cc!r} but this GPU has {here_cc!r}"
    built_trt = info.tensorrt
    if compat.version_compatible:
        if _version(tensorrt)[:1] != _version(built_trt)[:1] or _version(tensorrt) < _version(built_trt):
            major = str(built_trt).split(".")[0]
            return (
                f"a version-compatible plan from TensorRT {built_trt} needs TensorRT {major}.x >= {built_trt}, "
                f"but this machine has {tensorrt!r}"
            )
    elif built_trt != tensorrt:
        return f"built for tensorrt {built_trt!r} but this machine has {tensorrt!r}"
    return None


class EngineRunner:
    """Runs a built engine on torch CUDA buffers; refuses an engine built for another setup."""

    def __init__(self, engine_path: Path, info_path: Path):
        trt, reason = tensorrt_or_reason()
        if trt is None:
            raise EngineError(f"{engine_path}: cannot run it here: {reason}")
        info = EngineInfo.load(info_path)
        why = why_not_here(info, trt.__version__, gpu_info())
        if why:
            raise EngineError(f"{engine_path} {why}: rebuild it here with `lio engine` (or `dvc repro engine`)")
        import torch

        self.torch, self.trt = torch, trt
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        if info.compatibility.version_compatible:
            self.runtime.engine_host_code_allowed = True  # a version-compatible plan carries its own runtime
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineError(f"{engine_path}: TensorRT cannot deserialize it (corrupt or truncated file?)")
        self.context = self.engine.create_execution_context()
        if info.input is None or info.output is None:
            raise EngineError(f"{info_path}: no tensor names (written where no engine was built); rerun `lio engine`")
        self.input, self.output = info.input.name, info.output.name
        self.stream = torch.cuda.Stream()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.input, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return y.cpu().numpy()


def build_engine(
    cfg: EngineConfig, onnx_files: dict[str, Path], export_report: Path, engine: Path, info_path: Path, cache: Path
) -> EngineInfo:
    """The engine stage: build from the `engine.precision` ONNX variant (or the next more precise
    one that passed its gate) where TensorRT and a GPU exist; elsewhere record why not
    (built: false), failing only if engine.required is true."""
    precision, fallback = engine_precision(cfg.precision, ExportReport.load(export_report))
    if fallback and cfg.required == "true":
        raise EngineError(
            f"engine.required is true and engine.precision {cfg.precision} cannot be deployed: {fallback}"
        )
    onnx_path = paths.require(onnx_files[precision], "export")
    meta = onnx_runtime.read_meta(onnx_path)
    engine.unlink(missing_ok=True)  # never leave an engine from other settings behind
    engine.parent.mkdir(parents=True, exist_ok=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    trt, reason = (None, "engine.required is false") if cfg.required == "false" else tensorrt_or_reason()
    if trt is None and cfg.required == "true":
        raise EngineError(f"engine.required is true but the engine cannot be built here: {reason}")
    built = build(trt, onnx_path, engine, cache, cfg).fields() if trt is not None else {"reason": reason}
    info = EngineInfo(
        built=trt is not None,
        precision=precision,
        requested_precision=cfg.precision,
        profile=Profile(cfg.min_batch, cfg.opt_batch, cfg.max_batch),
        onnx=str(onnx_path),
        classes=meta.classes,  # a deployer who fetches models/engine alone still has the labels and preprocessing
        preprocess=meta.preprocess,
        compatibility=Compatibility(cfg.hardware_compatibility, cfg.version_compatible),
        fallback=fallback,
        **built,
    )
    info.save(info_path)
    return info
