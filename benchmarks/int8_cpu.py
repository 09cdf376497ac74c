"""The CPU INT8 variant (ONNX Runtime static quantization, `int8_cpu`) against FP32, side by side
in one run on this machine's CPU: batch-32 throughput, batch-1 latency, test top-1.

    dvc repro export && python benchmarks/int8_cpu.py [--iters 20]

Goal (issue "Deploy with guarantees"): batch-32 throughput >= 3.5x FP32 on a CPU with VNNI
(>= 1.5x on an AVX2-only CPU), batch-1 latency below FP32's, top-1 within 0.5 points.
ModelOpt's INT8 (QDQ for TensorRT) is timed beside it for reference.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.core import paths
from pipeline.core.artifacts.export import ExportReport
from pipeline.core.metrics import accuracy
from pipeline.data.dataset import stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import onnx_runtime

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which INT8-relevant instruction sets it has (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or platform.machine(), []
    text = info.read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return name, [f for f in INT8_FLAGS if f in flags]


def measure(path: Path, images: np.ndarray, labels: np.ndarray, iters: int) -> dict:
    sess = onnx_runtime.session(path)
    logits = np.concatenate([onnx_runtime.run(sess, images[i : i + 32]) for i in range(0, len(images), 32)])
    one, batch = images[:1], np.resize(images, (32, *images.shape[1:]))
    for _ in range(3):
        onnx_runtime.run(sess, one), onnx_runtime.run(sess, batch)
    lat = []
    for _ in range(iters * 3):
        start = time.perf_counter()
        onnx_runtime.run(sess, one)
        lat.append(time.perf_counter() - start)
    thr = []
    for _ in range(iters):
        start = time.perf_counter()
        onnx_runtime.run(sess, batch)
        thr.append(time.perf_counter() - start)
    return {
        "top1": accuracy(logits, labels)["top1"],
        "p50_ms": 1e3 * float(np.median(lat)),
        "img_s": 32 / float(np.median(thr)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    files = {p: paths.ONNX[p] for p in ("fp32", "int8_cpu", "int8") if paths.ONNX[p].exists()}
    if "fp32" not in files or "int8_cpu" not in files:
        raise SystemExit("models/onnx/model.onnx and model.int8_cpu.onnx are needed: run `dvc repro export` first")
    meta = onnx_runtime.read_meta(files["fp32"])
    rows, _ = read_manifest(paths.PREPARED)
    test = [r for r in rows if r.split == "test"]
    images = stack_images(test, eval_preset(meta.preprocess)).numpy()
    labels = np.array([r.label for r in test])
    got = {p: measure(f, images, labels, args.iters) for p, f in files.items()}
    name, flags = cpu()
    export = ExportReport.load(paths.EXPORT_REPORT) if paths.EXPORT_REPORT.exists() else None
    variant = export.variants.get("int8_cpu") if export else None
    chosen = variant.details if variant else {}
    fp32 = got["fp32"]
    print(f"\nCPU: {name}; INT8 instructions: {', '.join(flags) or 'none'}; ONNX Runtime {ort.__version__}, ")
    print(
        f"{len(test)} test images at {meta.preprocess.crop} px; int8_cpu = {chosen.get('format')} / "
        f"{chosen.get('calibration')} calibration.\n"
    )
    print("| variant | test top-1 | p50 ms @ batch 1 | latency vs FP32 | img/s @ batch 32 | throughput vs FP32 |")
    print("|---|---|---|---|---|---|")
    for p, r in got.items():
        print(
            f"| {p} | {r['top1']:.4f} | {r['p50_ms']:.2f} | {r['p50_ms'] / fp32['p50_ms']:.2f}x | {r['img_s']:.1f} | "
            f"{r['img_s'] / fp32['img_s']:.2f}x |"
        )
    q = got["int8_cpu"]
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    target = 3.5 if vnni else 1.5
    checks = {
        f"batch-32 throughput >= {target}x FP32 ({'VNNI' if vnni else 'no VNNI'})": q["img_s"] / fp32["img_s"]
        >= target,
        "batch-1 latency below FP32's": q["p50_ms"] < fp32["p50_ms"],
        "top-1 within 0.5 points of FP32": abs(q["top1"] - fp32["top1"]) <= 0.005,
    }
    print("\n" + "\n".join(f"- {k}: {'reached' if ok else 'NOT reached'}" for k, ok in checks.items()))


if __name__ == "__main__":
    main()
