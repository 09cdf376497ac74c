"""The converters: pure file-in, file-out steps (as mmdeploy's torch2onnx), each written
atomically and checked before it lands. Precision is decided in the ONNX graph (docs/method.md,
"Precision"), so that TensorRT can build every GPU variant strongly typed: FP16 by ModelOpt
AutoCast, INT8 by ModelOpt post-training quantization (QDQ, made for TensorRT); the CPU's INT8 is
ONNX Runtime's own (pipeline/deploy/quantize.py)."""

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
from pipeline.deploy import onnx_runtime

INPUT, OUTPUT = "input", "logits"


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: Deployable) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    _export(model.eval(), torch.randn(2, 3, input_size, input_size), INPUT, path, opset, meta)


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


def export_qdq(student: nn.Module, path: Path, input_size: int, opset: int, meta: Deployable) -> None:
    """The fake-quantized student as a QDQ graph (QuantizeLinear/DequantizeLinear with its scales): what
    TensorRT builds as INT8. ModelOpt's quantizers export through torch's TorchScript-based exporter
    (torch.export cannot trace their range checks)."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            student.eval(),
            (torch.randn(2, 3, input_size, input_size),),
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


def export_fused(model: nn.Module, path: Path, opset: int, meta: Deployable) -> None:
    """The fused-preprocessing variant: input `images`, uint8 [batch, crop, crop, 3]
    (resized and centre-cropped RGB: pipeline.deploy.preprocess.resize_and_crop)."""
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
