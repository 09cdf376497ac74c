"""ONNX export of the plain model, and its FP16 / INT8 variants made with NVIDIA ModelOpt.

Precision is decided in the ONNX graph (SPEC section 7), so that TensorRT can build every
variant strongly typed. Each file is written atomically and checked before it lands: the
FP32 export must pass `onnx.checker` (full check) and match PyTorch on the test images;
the variants are checked in ONNX Runtime and compared with FP32.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipeline import onnx_runtime
from pipeline.errors import PipelineError
from pipeline.io import atomic_path

INPUT, OUTPUT = "input", "logits"


class ExportError(PipelineError, RuntimeError):
    pass


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: dict) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    dummy = torch.randn(2, 3, input_size, input_size)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model.eval(), (dummy,), str(tmp), dynamo=True, opset_version=opset, external_data=False,
            input_names=[INPUT], output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def check_parity(ort_logits: np.ndarray, torch_logits: np.ndarray, tolerance: float = 1e-4) -> dict:
    """Same top-1 on every image, and logits within `tolerance` x the largest |logit|."""
    scale = float(np.abs(torch_logits).max())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    same_top1 = bool((ort_logits.argmax(1) == torch_logits.argmax(1)).all())
    return {"images": len(torch_logits), "same_top1": same_top1, "max_abs_diff": max_diff,
            "largest_logit": scale, "passed": same_top1 and max_diff <= tolerance * scale}


def export_fp16(fp32: Path, path: Path, meta: dict) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with atomic_path(path) as tmp:
        proto = convert_to_mixed_precision(onnx_path=str(fp32), low_precision_type="fp16", keep_io_types=True)
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8(fp32: Path, path: Path, calibration: np.ndarray, meta: dict) -> None:
    """Post-training quantization (QDQ) calibrated on training images."""
    from modelopt.onnx.quantization import quantize

    with atomic_path(path) as tmp:
        quantize(onnx_path=str(fp32), quantize_mode="int8", calibration_data=calibration.astype(np.float32),
                 calibration_method="entropy", calibration_eps=["cpu"], output_path=str(tmp),
                 high_precision_dtype="fp32", log_level="WARNING")
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))
