"""INT8 helpers that import no torch: ONNX Runtime's static quantization for its CPU provider,
and the nodes a repair keeps in FP32. The quantization runs in a fresh interpreter (see
`export_int8_cpu`), which starts in about 2 s without torch instead of 5 to 8 s with it.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import multiprocessing
from pathlib import Path

import numpy as np
import onnx

from pipeline.core.arch import STAGES
from pipeline.core.artifacts.deployable import Deployable
from pipeline.deploy import onnx_runtime

#: int8_cpu candidates: ONNX Runtime (format, calibration method); the fastest that passes its gate is kept.
#: Which format runs faster depends on the CPU; MinMax agreed with FP32 at least as well as Percentile,
#: Entropy and moving-average calibration on every run measured (docs/measured.md, "INT8 at 0.99").
CPU_INT8_CANDIDATES = (("QOperator", "MinMax"), ("QDQ", "MinMax"))
#: torchvision ResNet modules before `layer1`: a repair keeps them in FP32 with the first stages
STEM = ("conv1", "bn1", "relu", "maxpool")


def stage_nodes(model: onnx.ModelProto, stages: int) -> list[str]:
    """Names of the nodes in the stem and the first `stages` residual stages, read from the module
    scopes torch's exporter writes into each node's metadata (`pkg.torch.onnx.name_scopes`)."""
    modules = {*STEM, *STAGES[:stages]} if stages else set()
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]")
        top = ast.literal_eval(scopes)
        if len(top) > 1 and top[1] in modules:
            names.append(node.name)
    return names


def export_int8_cpu(
    fp32: Path,
    out_dir: Path,
    calibration: np.ndarray,
    meta: Deployable,
    settings: tuple[tuple[str, str], ...] = CPU_INT8_CANDIDATES,
    keep_stages: int = 0,
) -> dict[tuple[str, str], Path]:
    """ONNX Runtime static quantization for its CPU provider, one file per (format, calibration)
    in `settings` under `out_dir`: per-channel int8 weights, uint8 activations (the u8 x s8 kernels
    that AVX2, AVX-512 VNNI and AMX run), calibrated on training images; the stem and the first
    `keep_stages` stages stay in FP32. `out_dir` is a scratch folder for this FP32 file: the graph
    ONNX Runtime pre-processes for quantization is kept there for the next call.

    Runs in a fresh interpreter: ModelOpt's INT8 quantization patches `onnxruntime.quantization`
    in the process that ran it, after which ONNX Runtime's own quantizer fails.
    """
    return (
        _fresh_interpreter().submit(_export_int8_cpu, fp32, out_dir, calibration, meta, settings, keep_stages).result()
    )


@functools.cache
def _fresh_interpreter() -> concurrent.futures.ProcessPoolExecutor:
    """One spawned interpreter that runs only ONNX Runtime's quantizer, started once per process and
    kept for every later call (each start costs about 2 s)."""
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def _export_int8_cpu(
    fp32: Path,
    out_dir: Path,
    calibration: np.ndarray,
    meta: Deployable,
    settings: tuple[tuple[str, str], ...],
    keep_stages: int,
) -> dict[tuple[str, str], Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # equal batches: the histogram calibrators (Percentile, Entropy) stack per-batch outputs and fail on a short
    # last batch; the largest size up to 8 that divides the count (8 for the default 64 images)
    size = max(d for d in range(1, 9) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{meta.input: calibration[i : i + size].astype(np.float32)} for i in range(0, len(calibration), size)]
            )

        def get_next(self):
            return next(self.batches, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / f"{fp32.stem}.pre.onnx"  # shape inference and graph optimisation, once per scratch folder
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    exclude = stage_nodes(onnx.load(str(pre)), keep_stages)
    made = {}
    for fmt, method in settings:
        path = out_dir / f"{fmt}-{method}{f'-fp32-{keep_stages}' if keep_stages else ''}.onnx"
        quantize_static(
            str(pre),
            str(path),
            Reader(),
            quant_format=QuantFormat[fmt],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[method],
            nodes_to_exclude=exclude,
        )
        proto = onnx.load(str(path))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
        made[(fmt, method)] = path
    return made
