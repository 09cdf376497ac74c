"""ONNX export of the plain model, its reduced-precision variants, and the gates they must pass.

Precision is decided in the ONNX graph (docs/method.md, "Precision"), so that TensorRT can build
every GPU variant strongly typed: FP16 by ModelOpt AutoCast, INT8 by ModelOpt post-training
quantization (QDQ, made for TensorRT). `int8_cpu` is ONNX Runtime's own static quantization,
in the format its CPU kernels run fastest (ModelOpt's QDQ graph runs slower than FP32 there).

Each file is written atomically and checked before it lands: the FP32 export must pass
`onnx.checker` (full check) and match PyTorch on the test images. Every reduced-precision
variant then faces its gate (`export.gates`), decided on the **validation** split against FP32
on the best ONNX Runtime provider here (test numbers are recorded beside, never used to decide).
A variant that fails is deleted and marked rejected in reports/export.json with its numbers;
INT8 first gets one repair: its most sensitive layers stay in higher precision.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.config import ExportConfig, Gate
from pipeline.data.dataset import logits_over, stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import onnx_runtime
from pipeline.deploy.preprocess import resize_and_crop
from pipeline.deploy.runners import load_deployable, torch_runner
from pipeline.errors import PipelineError
from pipeline.evaluate.metrics import accuracy, agreement
from pipeline.io import atomic_path, write_json

INPUT, OUTPUT = "input", "logits"
#: int8_cpu candidates: ONNX Runtime formats x calibration methods; the fastest that passes its gate is kept.
CPU_INT8_FORMATS = ("QOperator", "QDQ")
CPU_INT8_CALIBRATIONS = ("MinMax", "Percentile")


class ExportError(PipelineError, RuntimeError):
    pass


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: dict) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    _export(model.eval(), torch.randn(2, 3, input_size, input_size), INPUT, path, opset, meta)


def _export(module: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int, meta: dict) -> None:
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


def export_fused(model: nn.Module, path: Path, preprocess: dict, opset: int, meta: dict) -> None:
    """The fused-preprocessing variant: input `images`, uint8 [batch, crop, crop, 3]."""
    crop = preprocess["crop"]
    fused = FusedPreprocess(model, preprocess["mean"], preprocess["std"]).eval()
    meta = {**meta, "input": "uint8 NHWC RGB, resized and centre-cropped (pipeline.deploy.preprocess.resize_and_crop)"}
    _export(fused, torch.zeros(2, crop, crop, 3, dtype=torch.uint8), "images", path, opset, meta)


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


def export_int8(fp32: Path, path: Path, calibration: np.ndarray, meta: dict, exclude: tuple[str, ...] = ()) -> None:
    """ModelOpt post-training quantization (QDQ, for TensorRT) calibrated on training images;
    `exclude` names nodes that stay in FP32."""
    from modelopt.onnx.quantization import quantize

    with atomic_path(path) as tmp:
        quantize(
            onnx_path=str(fp32),
            quantize_mode="int8",
            calibration_data=calibration.astype(np.float32),
            calibration_method="entropy",
            calibration_eps=["cpu"],
            nodes_to_exclude=list(exclude) or None,
            output_path=str(tmp),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8_cpu(fp32: Path, out_dir: Path, calibration: np.ndarray, meta: dict) -> dict[tuple[str, str], Path]:
    """ONNX Runtime static quantization for its CPU provider, one file per (format, calibration)
    candidate under `out_dir`: per-channel int8 weights, uint8 activations (the u8 x s8 kernels
    that AVX2, AVX-512 VNNI and AMX run), calibrated on training images.

    Runs in a fresh interpreter: ModelOpt's INT8 quantization patches `onnxruntime.quantization`
    in the process that ran it, after which ONNX Runtime's own quantizer fails.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(_export_int8_cpu, fp32, out_dir, calibration, meta).result()


def _export_int8_cpu(fp32: Path, out_dir: Path, calibration: np.ndarray, meta: dict) -> dict[tuple[str, str], Path]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # equal batches: the histogram calibrators (Percentile) stack per-batch outputs and fail on a short
    # last batch; the largest size up to 8 that divides the count (8 for the default 64 images)
    size = max(d for d in range(1, 9) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{INPUT: calibration[i : i + size].astype(np.float32)} for i in range(0, len(calibration), size)]
            )

        def get_next(self):
            return next(self.batches, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    made = {}
    for fmt in CPU_INT8_FORMATS:
        for method in CPU_INT8_CALIBRATIONS:
            path = out_dir / f"{fmt}-{method}.onnx"
            quantize_static(
                str(pre),
                str(path),
                Reader(),
                quant_format=QuantFormat[fmt],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[method],
            )
            proto = onnx.load(str(path))
            onnx_runtime.write_meta(proto, meta)
            onnx.save(proto, str(path))
            onnx.checker.check_model(str(path))
            made[(fmt, method)] = path
    pre.unlink()
    return made


def layer_sensitivity(fp32: Path, int8: Path, calibration: np.ndarray) -> list[tuple[str, float]]:
    """Quantized Conv/Gemm nodes, most sensitive first, on calibration images (never test).

    A node's sensitivity is the relative error it adds: ||y8 - y|| / ||y|| at its output minus
    the same at its input, both against the FP32 graph, so error inherited from earlier layers
    is not blamed on it.
    """
    quantized = onnx.load(str(int8))
    producers = {o: n for n in quantized.graph.node for o in n.output}

    def source(tensor: str) -> str:  # the float tensor before a Q -> DQ pair
        node = producers.get(tensor)
        while node is not None and node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            tensor = node.input[0]
            node = producers.get(tensor)
        return tensor

    fp_tensors = {o for n in onnx.load(str(fp32)).graph.node for o in n.output} | {INPUT}
    layers = {}
    for n in quantized.graph.node:
        if n.op_type in ("Conv", "Gemm") and producers.get(n.input[1]) is not None:  # weights through DQ
            pair = (source(n.input[0]), n.output[0])
            if all(t in fp_tensors for t in pair):
                layers[n.name] = pair
    wanted = sorted({t for pair in layers.values() for t in pair} - {INPUT})
    outs = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        model = onnx.load(str(path))
        model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted)
        sess = onnx_runtime.session(model.SerializeToString())
        values = sess.run(wanted, {INPUT: calibration.astype(np.float32)})
        outs[name] = dict(zip(wanted, values)) | {INPUT: calibration}

    def error(t: str) -> float:
        ref = outs["fp32"][t].astype(np.float64)
        return float(np.linalg.norm(outs["int8"][t] - ref)) / max(float(np.linalg.norm(ref)), 1e-12)

    scores = {name: error(out) - error(inp) for name, (inp, out) in layers.items()}
    return sorted(scores.items(), key=lambda kv: -kv[1])


def judge(gate: Gate, reference: dict, logits: dict, labels: dict) -> dict:
    """The gate on validation (`passed` decides), with test numbers beside (reported only)."""
    val_top1 = accuracy(logits["val"], labels["val"])["top1"]
    ref_top1 = accuracy(reference["val"], labels["val"])["top1"]
    val_agreement = agreement(logits["val"], reference["val"])
    return {
        "passed": bool(ref_top1 - val_top1 <= gate.max_top1_drop + 1e-12 and val_agreement >= gate.min_agreement),
        "max_top1_drop": gate.max_top1_drop,
        "min_agreement": gate.min_agreement,
        "val_images": len(labels["val"]),
        "val_top1": val_top1,
        "val_top1_fp32": ref_top1,
        "val_top1_drop": ref_top1 - val_top1,
        "val_agreement": val_agreement,
        "test_top1": accuracy(logits["test"], labels["test"])["top1"],
        "test_agreement": agreement(logits["test"], reference["test"]),
        "max_abs_diff_vs_fp32": float(np.abs(logits["test"] - reference["test"]).max()),
    }


def batch32_throughput(path: Path, images: np.ndarray, iters: int = 3) -> float:
    """Images per second at batch 32 on this machine's ONNX Runtime CPU provider (best of `iters`)."""
    sess = onnx_runtime.session(path)
    x = np.resize(images, (32, *images.shape[1:])).astype(np.float32)
    onnx_runtime.run(sess, x)
    best = min(_timed(lambda: onnx_runtime.run(sess, x)) for _ in range(iters))
    return 32 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def export_all(
    deployable: Path,
    prepared: Path,
    onnx_files: dict[str, Path],
    report: Path,
    cfg: ExportConfig,
    seed: int,
    fused: Path | None = None,
) -> dict:
    """The deployable -> every ONNX variant in `cfg.precisions`, gated; returns the results,
    also written to `report` (reports/export.json).

    Preprocessing comes from the deployable's metadata (models/<arch>.json). No variant of
    an earlier, wider export outlives this one; an FP32 file that disagrees with PyTorch is
    removed and the stage fails.
    """
    model, meta = load_deployable(deployable)
    rows, _ = read_manifest(prepared)
    preset = eval_preset(meta["preprocess"])
    split = {s: [r for r in rows if r["split"] == s] for s in ("train", "val", "test")}
    labels = {s: np.array([r["label"] for r in split[s]]) for s in ("val", "test")}

    for path in [*onnx_files.values(), *([fused] if fused else [])]:
        path.unlink(missing_ok=True)
    fp32 = onnx_files["fp32"]
    export_fp32(model, fp32, meta["preprocess"]["crop"], cfg.opset, meta)
    session = onnx_runtime.session(fp32, "cuda" if torch.cuda.is_available() else "cpu")
    fp32_run = lambda x: onnx_runtime.run(session, x)  # noqa: E731
    out = logits_over({"pytorch": torch_runner(model), "fp32": fp32_run}, split["test"], preset)
    parity = check_parity(out["fp32"], out["pytorch"])
    if not parity["passed"]:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    reference = {"test": out["fp32"], "val": logits_over({"r": fp32_run}, split["val"], preset)["r"]}
    result: dict = {
        "fp32": {
            "file": str(fp32),
            "provider": onnx_runtime.provider(session),
            "parity_vs_pytorch": parity,
            "val_top1": accuracy(reference["val"], labels["val"])["top1"],
            "test_top1": accuracy(reference["test"], labels["test"])["top1"],
            "status": "reference",
        },
        "gates_decided_on": f"validation split ({len(split['val'])} images) against onnxruntime-fp32 on "
        f"{onnx_runtime.provider(session)}",
    }

    order = np.random.default_rng(seed).permutation(len(split["train"]))[: cfg.calib_images]
    calibration = stack_images([split["train"][i] for i in order], preset).numpy()

    def evaluate(path: Path, gate: Gate) -> tuple[dict, onnx_runtime.ort.InferenceSession]:
        sess = onnx_runtime.session(path)
        run = lambda x: onnx_runtime.run(sess, x)  # noqa: E731
        logits = {s: logits_over({"v": run}, split[s], preset)["v"] for s in ("val", "test")}
        return judge(gate, reference, logits, labels), sess

    for precision in cfg.precisions:
        if precision == "fp32":
            continue
        path, gate = onnx_files[precision], getattr(cfg.gates, precision)
        entry: dict = (
            {"file": str(path), "calibration_images": len(order)} if "int8" in precision else {"file": str(path)}
        )
        if precision == "fp16":
            export_fp16(fp32, path, meta)
        elif precision == "int8":
            export_int8(fp32, path, calibration, meta)
        if precision == "int8_cpu":
            candidates: list[dict[str, Any]] = []
            entry["candidates"] = candidates
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                for (fmt, method), candidate in export_int8_cpu(fp32, Path(tmp), calibration, meta).items():
                    verdict, _ = evaluate(candidate, gate)
                    speed = batch32_throughput(candidate, calibration)
                    candidates.append({"format": fmt, "calibration": method, "batch32_img_s": speed, "gate": verdict})
                    candidates[-1]["file"] = candidate
                passing = [c for c in candidates if c["gate"]["passed"]]
                best = max(passing, key=lambda c: c["batch32_img_s"]) if passing else None
                if best is not None:  # the fastest candidate that passes its gate
                    os.replace(best["file"], path)
                    entry |= {"format": best["format"], "calibration": best["calibration"]}
                for c in candidates:
                    del c["file"]
            verdict = best["gate"] if best else min((c["gate"] for c in candidates), key=lambda g: g["val_top1_drop"])
        else:
            verdict, sess = evaluate(path, gate)
            entry["provider"] = onnx_runtime.provider(sess)
        if precision == "int8" and not verdict["passed"] and cfg.int8_repair_layers:
            ranked = layer_sensitivity(fp32, path, calibration[:16])
            kept = [name for name, _ in ranked[: cfg.int8_repair_layers]]
            export_int8(fp32, path, calibration, meta, exclude=tuple(kept))
            entry["first_try"] = verdict
            entry["repair"] = {"kept_in_fp32": kept, "sensitivity": dict(ranked[: cfg.int8_repair_layers])}
            verdict, _ = evaluate(path, gate)
            entry["repair"]["helped"] = verdict["val_agreement"] > entry["first_try"]["val_agreement"]
        entry["gate"] = verdict
        entry["status"] = "passed" if verdict["passed"] else "rejected"
        entry["test_top1"] = verdict["test_top1"]
        if not verdict["passed"]:
            path.unlink(missing_ok=True)  # out of the deployables; its numbers stay in the report
        result[precision] = entry
    if cfg.fuse_preprocess and fused is not None:
        result["fused_preprocess"] = export_fused_checked(
            model, fused, meta, cfg.opset, split["test"], reference["test"]
        )
    result["gates"] = {p: asdict(getattr(cfg.gates, p)) for p in cfg.precisions if p != "fp32"}
    write_json(report, result)
    return result


def export_fused_checked(
    model: nn.Module, path: Path, meta: dict, opset: int, rows: list[dict], reference: np.ndarray
) -> dict:
    """The fused variant, fed the client's uint8 crops of the test images, must give FP32's top-1
    and logits within 1e-4 of the largest (else it is removed and the stage fails)."""
    export_fused(model, path, meta["preprocess"], opset, meta)
    sess = onnx_runtime.session(path)
    crops = np.concatenate([resize_and_crop(r["path"], meta["preprocess"]) for r in rows])
    logits = np.concatenate([sess.run(None, {"images": crops[i : i + 32]})[0] for i in range(0, len(crops), 32)])
    parity = check_parity(logits, reference)
    if not parity["passed"]:
        path.unlink()
        raise ExportError(f"{path}: the fused-preprocessing model disagrees with FP32 on the test images ({parity})")
    return {"file": str(path), "input": "uint8 [batch, crop, crop, 3]", "parity_vs_fp32": parity}
