"""ONNX export of the plain model, and its FP16 / INT8 variants made with NVIDIA ModelOpt.

Precision is decided in the ONNX graph (docs/method.md, "Precision"), so that TensorRT can build every
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

from pipeline import onnx_runtime, paths
from pipeline.data.dataset import logits_over, stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import load_deployable, torch_runner
from pipeline.errors import PipelineError
from pipeline.io import atomic_path, write_json
from pipeline.metrics import accuracy, agreement

INPUT, OUTPUT = "input", "logits"


class ExportError(PipelineError, RuntimeError):
    pass


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: dict) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    dummy = torch.randn(2, 3, input_size, input_size)
    with atomic_path(path) as tmp:
        torch.onnx.export(
            model.eval(),
            (dummy,),
            str(tmp),
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
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
    return {
        "images": len(torch_logits),
        "same_top1": same_top1,
        "max_abs_diff": max_diff,
        "largest_logit": scale,
        "passed": same_top1 and max_diff <= tolerance * scale,
    }


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
        quantize(
            onnx_path=str(fp32),
            quantize_mode="int8",
            calibration_data=calibration.astype(np.float32),
            calibration_method="entropy",
            calibration_eps=["cpu"],
            output_path=str(tmp),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_all(arch: str, precisions: list[str], opset: int, calib_images: int, seed: int) -> dict:
    """The deployable -> every ONNX variant in `precisions`, each checked in ONNX Runtime on
    the test split; returns the results, also written to reports/export.json.

    Preprocessing comes from the deployable's metadata (models/<arch>.json). No variant of
    an earlier, wider export outlives this one; an FP32 file that disagrees with PyTorch is
    removed and the stage fails.
    """
    model, meta = load_deployable(paths.require(paths.deployable(arch), "strip"))
    rows, _ = read_manifest(paths.require(paths.PREPARED, "prepare"))
    preset = eval_preset(meta["preprocess"])
    test_rows = [r for r in rows if r["split"] == "test"]
    labels = np.array([r["label"] for r in test_rows])

    for path in paths.ONNX.values():
        path.unlink(missing_ok=True)
    fp32 = paths.ONNX["fp32"]
    export_fp32(model, fp32, meta["preprocess"]["crop"], opset, meta)
    session = onnx_runtime.session(fp32)
    out = logits_over(
        {"pytorch": torch_runner(model), "fp32": lambda x: onnx_runtime.run(session, x)}, test_rows, preset
    )
    fp32_logits = out["fp32"]
    parity = check_parity(fp32_logits, out["pytorch"])
    if not parity["passed"]:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    result = {
        "fp32": {
            "file": str(fp32),
            "provider": onnx_runtime.provider(session),
            "parity_vs_pytorch": parity,
            "test_top1": accuracy(fp32_logits, labels)["top1"],
        }
    }

    train_rows = [r for r in rows if r["split"] == "train"]
    order = np.random.default_rng(seed).permutation(len(train_rows))[:calib_images]
    sessions = {}
    for precision in precisions:
        path = paths.ONNX[precision]
        if precision == "fp16":
            export_fp16(fp32, path, meta)
        elif precision == "int8":
            export_int8(fp32, path, stack_images([train_rows[i] for i in order], preset).numpy(), meta)
        else:
            continue
        sessions[precision] = onnx_runtime.session(path)
    runs = {precision: (lambda x, s=s: onnx_runtime.run(s, x)) for precision, s in sessions.items()}
    for precision, logits in logits_over(runs, test_rows, preset).items():
        result[precision] = {
            "file": str(paths.ONNX[precision]),
            "provider": onnx_runtime.provider(sessions[precision]),
            "top1_agreement_vs_fp32": agreement(logits, fp32_logits),
            "max_abs_diff_vs_fp32": float(np.abs(logits - fp32_logits).max()),
            "test_top1": accuracy(logits, labels)["top1"],
        }
        if precision == "int8":
            result[precision]["calibration_images"] = int(len(order))
    write_json(paths.EXPORT_REPORT, result)
    return result
