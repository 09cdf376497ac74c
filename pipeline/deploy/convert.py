"""The converters: file in, file out (as mmdeploy's torch2onnx), each written atomically and checked
before it lands: the deployable (models/<arch>.pt and its .json) -> FP32 ONNX and the fused-preprocessing
ONNX; FP32 ONNX -> FP16, INT8 (QDQ) and the CPU's INT8. Precision is decided in the ONNX graph
(docs/method.md, "Precision"), so that TensorRT can build every GPU variant strongly typed: FP16 by
ModelOpt AutoCast, INT8 by ModelOpt post-training quantization (QDQ, made for TensorRT); the CPU's INT8
is ONNX Runtime's own, which runs in a fresh interpreter (pipeline/deploy/quantize.py). A format
ONNX Runtime cannot make comes back as `Failed`, beside the files it made.

Two steps take a module, because what they convert has no file form: the QAT student, fake-quantized
and BN-folded by ModelOpt (`export_qdq`), and its plain network (`export_module`)."""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.artifacts.deployable import Deployable
from pipeline.core.io import atomic_path
from pipeline.deploy import onnx_runtime, quantize
from pipeline.deploy.quantize import CPU_INT8_CANDIDATES, Failed
from pipeline.deploy.runners import load_deployable

INPUT, OUTPUT = "input", "logits"


def export_fp32(weights: Path, path: Path, opset: int) -> None:
    """The deployable -> one self-contained FP32 file with a symbolic batch axis, from torch.export
    (opset >= 18), its metadata inside."""
    model, meta = load_deployable(weights)
    export_module(model, path, opset, meta)


def export_module(model: nn.Module, path: Path, opset: int, meta: Deployable) -> None:
    """An in-memory network (the QAT student's plain one) -> FP32 ONNX, as `export_fp32`."""
    size = meta.preprocess.crop
    _export(model.eval(), torch.randn(2, 3, size, size), INPUT, path, opset, meta)


def _export(
    module: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int, meta: Deployable
) -> None:
    """torch.export -> ONNX with a symbolic batch axis and the metadata inside, fully checked, atomically."""
    with atomic_path(path) as tmp:
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[input_name],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def export_qdq(student: nn.Module, path: Path, opset: int, meta: Deployable) -> None:
    """The fake-quantized student as a QDQ graph (QuantizeLinear/DequantizeLinear with its scales): what
    TensorRT builds as INT8. ModelOpt's quantizers export through torch's TorchScript-based exporter
    (torch.export cannot trace their range checks)."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            student.eval(),
            (torch.randn(2, 3, meta.preprocess.crop, meta.preprocess.crop),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


class FusedPreprocess(nn.Module):
    """uint8 NHWC images at the crop size -> logits: the scaling and normalisation move into the
    graph (TensorRT and Triton run them on the GPU), and a client only resizes and crops."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255
        return self.model((x - self.mean) / self.std)


def export_fused(weights: Path, path: Path, opset: int) -> None:
    """The deployable -> the fused-preprocessing variant: input `images`, uint8 [batch, crop, crop, 3]
    (resized and centre-cropped RGB: pipeline.deploy.preprocess.resize_and_crop)."""
    model, meta = load_deployable(weights)
    spec = meta.preprocess
    fused = FusedPreprocess(model, spec.mean, spec.std).eval()
    meta = replace(meta, input="images", preprocess=replace(spec, layout="NHWC RGB uint8, resized and cropped"))
    _export(fused, torch.zeros(2, spec.crop, spec.crop, 3, dtype=torch.uint8), "images", path, opset, meta)


def export_fp16(fp32: Path, path: Path, meta: Deployable) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with atomic_path(path) as tmp:
        proto = convert_to_mixed_precision(onnx_path=str(fp32), low_precision_type="fp16", keep_io_types=True)
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8(
    fp32: Path, path: Path, calibration: np.ndarray, meta: Deployable, exclude: tuple[str, ...] = ()
) -> None:
    """ModelOpt post-training quantization (QDQ, for TensorRT) calibrated on training images;
    `exclude` names the nodes that stay in FP32 (exact names). ModelOpt gets a copy of `fp32`: it
    writes shape inference into its input file (`onnx.shape_inference.infer_shapes_path`), and the
    FP32 file is an output of its own, already checked, that other readers may have open."""
    from modelopt.onnx.quantization import quantize

    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        source = Path(scratch) / fp32.name
        shutil.copyfile(fp32, source)
        quantize(
            onnx_path=str(source),
            quantize_mode="int8",
            calibration_data=calibration.astype(np.float32),
            calibration_method="entropy",
            calibration_eps=["cpu"],
            nodes_to_exclude=[re.escape(name) + "$" for name in exclude] or None,  # ModelOpt matches re.match
            output_path=str(tmp),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8_cpu(
    fp32: Path,
    out_dir: Path,
    calibration: np.ndarray,
    meta: Deployable,
    settings: tuple[tuple[str, str], ...] = CPU_INT8_CANDIDATES,
    keep_layers: tuple[str, ...] = (),
) -> dict[tuple[str, str], Path | Failed]:
    """ONNX Runtime static quantization for its CPU provider, one file per (format, calibration)
    in `settings` under `out_dir`: per-channel int8 weights, uint8 activations (the u8 x s8 kernels
    that AVX2, AVX-512 VNNI and AMX run), calibrated on training images; `keep_layers` (torchvision
    module names) stay in FP32, with the nodes that compute their inputs. `out_dir` is a scratch
    folder for this FP32 file: the graph ONNX Runtime pre-processes for quantization is kept there
    for the next call.

    Runs in a fresh interpreter: ModelOpt's INT8 quantization patches `onnxruntime.quantization`
    in the process that ran it, after which ONNX Runtime's own quantizer fails.
    """
    job = (fp32, out_dir, calibration, meta, settings, keep_layers)
    return quantize.fresh_interpreter().submit(quantize.quantize_static_cpu, *job).result()
