"""CPU INT8 (ONNX Runtime static quantization, `int8_cpu`) against FP32, side by side in one run
on this machine's CPU: batch-32 throughput, batch-1 latency, test top-1, and agreement with FP32
on the gate images. It quantizes the FP32 export itself with every layer in INT8 (the default 64
calibration images, MinMax, in both of ONNX Runtime's formats), so it runs whether or not the export
shipped `int8_cpu`; the shipped file, the one `dvc repro` made, is timed beside.

    dvc repro export && python benchmarks/int8_cpu.py [--iters 20]

Goal (issue "INT8 by the field's rule"): the shipped `int8_cpu` at >= 3x FP32's batch-32 throughput
and <= 0.5x its batch-1 p50 latency on a CPU with VNNI (>= 1.5x throughput on an AVX2-only CPU).
Each row is timed in turns with FP32 (rounds interleaved, medians), so a busy neighbour slows both.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipeline.core import markdown, paths
from pipeline.core.machine import cpu  # noqa: E402  (standard library only)
from pipeline.core.metrics import accuracy, wilson
from pipeline.data.dataset import stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import onnx_runtime
from pipeline.deploy.convert import export_int8_cpu

SETTINGS = (("QOperator", "MinMax"), ("QDQ", "MinMax"))


def measure(sess, images: np.ndarray, iters: int) -> tuple[list[float], list[float]]:
    """One round: `iters` batch-1 latencies and `iters // 4 + 1` batch-32 call times."""
    one, batch = images[:1], np.resize(images, (32, *images.shape[1:]))
    for _ in range(2):
        onnx_runtime.run(sess, one), onnx_runtime.run(sess, batch)
    lat, thr = [], []
    for _ in range(iters):
        start = time.perf_counter()
        onnx_runtime.run(sess, one)
        lat.append(time.perf_counter() - start)
    for _ in range(iters // 4 + 1):
        start = time.perf_counter()
        onnx_runtime.run(sess, batch)
        thr.append(time.perf_counter() - start)
    return lat, thr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fp32 = paths.ONNX["fp32"]
    if not fp32.exists():
        raise SystemExit(f"{fp32} is needed: run `dvc repro export` first")
    meta = onnx_runtime.read_meta(fp32)
    rows, _ = read_manifest(paths.PREPARED)
    split = {s: [r for r in rows if r.split == s] for s in ("train", "val", "gate", "test")}
    preset = eval_preset(meta.preprocess)
    images = {s: stack_images(split[s], preset).numpy() for s in ("test",)}
    images["gate"] = stack_images(split["val"] + split["gate"], preset).numpy()
    order = np.random.default_rng(0).permutation(len(split["train"]))[:64]
    calibration = stack_images([split["train"][i] for i in order], preset).numpy()
    labels = np.array([r.label for r in split["test"]])

    files = {"fp32": fp32}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, method in SETTINGS:
            made = export_int8_cpu(fp32, Path(tmp), calibration, meta, ((fmt, method),))[fmt, method]
            if isinstance(made, Path):  # else ONNX Runtime's quantizer failed on this format (`Failed`, why)
                files[f"int8, every layer, {fmt}"] = made
        if paths.ONNX["int8_cpu"].exists():
            files["int8_cpu (shipped)"] = paths.ONNX["int8_cpu"]
        sessions = {k: onnx_runtime.session(f) for k, f in files.items()}
        logits = {k: {s: onnx_runtime.run(sess, images[s]) for s in images} for k, sess in sessions.items()}
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in sessions}
        for _ in range(args.rounds):  # interleaved: every variant is timed in turn, round after round
            for k, sess in sessions.items():
                lat, thr = measure(sess, images["test"], args.iters)
                times[k][0].extend(lat)
                times[k][1].extend(thr)

    name, flags = cpu()
    print(f"\nCPU: {name}; INT8 instructions: {', '.join(flags) or 'none'}; ONNX Runtime {ort.__version__}; ")
    print(f"{len(labels)} test and {len(images['gate'])} gate images at {meta.preprocess.crop} px.\n")
    ref = logits["fp32"]["gate"].argmax(1)
    speed = {k: (1e3 * float(np.median(lat)), 32 / float(np.median(thr))) for k, (lat, thr) in times.items()}
    lines: list[dict] = []
    for k in files:
        same = int((logits[k]["gate"].argmax(1) == ref).sum())
        lo, hi = wilson(same, len(ref))
        p50, img_s = speed[k]
        lines.append(
            {
                "variant": k,
                "top1": accuracy(logits[k]["test"], labels)["top1"],
                "agreement": f"{same / len(ref):.4f} [{lo:.3f}, {hi:.3f}]",
                "p50": p50,
                "p50_ratio": f"{p50 / speed['fp32'][0]:.2f}x",
                "img_s": img_s,
                "img_s_ratio": f"{img_s / speed['fp32'][1]:.2f}x",
            }
        )
    columns = [
        ("variant", "variant", ""),
        ("top1", "test top-1", ".4f"),
        ("agreement", "gate agreement with FP32", ""),
        ("p50", "p50 ms @ batch 1", ".2f"),
        ("p50_ratio", "vs FP32", ""),
        ("img_s", "img/s @ batch 32", ".1f"),
        ("img_s_ratio", "vs FP32", ""),
    ]
    print(markdown.table(lines, columns))
    vnni = any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    target = 3.0 if vnni else 1.5
    shipped = speed.get("int8_cpu (shipped)")
    if shipped is None:
        print("\n- goal: nothing shipped (the int8_cpu gate rejected it, or it was not exported)")
        return
    ratio, latency = shipped[1] / speed["fp32"][1], shipped[0] / speed["fp32"][0]
    where = "VNNI" if vnni else "no VNNI"
    print(
        f"\n- goal: shipped int8_cpu >= {target}x FP32 at batch 32 ({where}): {ratio:.2f}x, "
        f"{'reached' if ratio >= target else 'NOT reached'}"
    )
    if vnni:
        print(
            f"- goal: shipped int8_cpu p50 <= 0.5x FP32 at batch 1: {latency:.2f}x, "
            f"{'reached' if latency <= 0.5 else 'NOT reached'}"
        )


if __name__ == "__main__":
    main()
