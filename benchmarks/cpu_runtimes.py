"""Every CPU candidate (runtime x graph x precision hint, pipeline/serve/candidates.py) side by side in one
run on this machine's CPU: batch-1 p50 and batch-32 throughput, timed in interleaved rounds (medians, so a
busy neighbour slows every row alike), beside ONNX Runtime FP32 and ONNX Runtime's INT8 (the
recommendation before OpenVINO). The gates are the runtime stage's (reports/runtime.json), not re-run.

    dvc repro runtime && python benchmarks/cpu_runtimes.py [--rounds 3 --iters 40]

Goals (issue "The fastest CPU runtime, chosen on the machine"): on a CPU with AMX, the shipped candidate at
>= 1.7x ONNX Runtime INT8's batch-32 throughput (>= 7x FP32's) and batch-1 p50 <= 0.4x FP32's; on a CPU where
OpenVINO is slower, ONNX Runtime is chosen.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pipeline.artifacts.runtime import RuntimeChoice
from pipeline.core import markdown, paths
from pipeline.core.machine import cpu, threads
from pipeline.serve.candidates import candidate
from pipeline.serve.runtimes import RuntimeUnavailable


def rounds(runs: dict, x: np.ndarray, n: int, iters: int) -> dict[str, tuple[float, float]]:
    """name -> (median batch-1 ms, median img/s at len(x)), the candidates taking turns each round."""
    one = x[:1]
    lat: dict[str, list[float]] = {k: [] for k in runs}
    thr: dict[str, list[float]] = {k: [] for k in runs}
    for run in runs.values():
        run(one), run(x)
    for _ in range(n):
        for name, run in runs.items():
            for _ in range(iters):
                start = time.perf_counter()
                run(one)
                lat[name].append((time.perf_counter() - start) * 1000)
            for _ in range(max(1, iters // 8)):
                start = time.perf_counter()
                run(x)
                thr[name].append(len(x) / (time.perf_counter() - start))
    return {k: (statistics.median(lat[k]), statistics.median(thr[k])) for k in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    choice = RuntimeChoice.load(paths.RUNTIME)
    name, flags = cpu()
    print(f"{name} ({', '.join(flags)}), {threads()} threads; gates from {paths.RUNTIME} (chosen on {choice.cpu})")
    runs, notes = {}, []
    for c in choice.candidates:
        if c.status == "unavailable":
            notes.append(f"{c.name}: {c.reason}")
            continue
        try:
            runs[c.name] = candidate(c.name).open(paths.ONNX[c.precision]).run
        except RuntimeUnavailable as e:
            notes.append(f"{c.name}: {e}")
    x = np.random.default_rng(0).standard_normal((args.batch, *_input_shape()), dtype=np.float32)
    timed = rounds(runs, x, args.rounds, args.iters)
    fp32, ort_int8 = timed["onnxruntime-fp32"], timed.get("onnxruntime-int8_cpu")
    rows = []
    for c in choice.candidates:
        if c.name not in timed:
            continue
        p50, img_s = timed[c.name]
        rows.append(
            {
                "candidate": f"**{c.name}**" if c.name == choice.chosen else c.name,
                "gate": c.status,
                "p50": p50,
                "p50_ratio": f"{p50 / fp32[0]:.2f}x",
                "img_s": img_s,
                "vs_fp32": f"{img_s / fp32[1]:.2f}x",
                "vs_ort_int8": f"{img_s / ort_int8[1]:.2f}x" if ort_int8 else "—",
            }
        )
    columns = [
        ("candidate", "candidate (shipped in bold)", ""),
        ("gate", "gate", ""),
        ("p50", "p50 ms, batch 1", ".2f"),
        ("p50_ratio", "vs ORT FP32", ""),
        ("img_s", f"img/s, batch {args.batch}", ".0f"),
        ("vs_fp32", "vs ORT FP32", ""),
        ("vs_ort_int8", "vs ORT INT8", ""),
    ]
    print(markdown.table(rows, columns))
    for note in notes:
        print(f"- not timed: {note}")


def _input_shape() -> tuple[int, ...]:
    from pipeline.deploy.onnx_runtime import read_meta

    crop = read_meta(paths.ONNX["fp32"]).preprocess.crop
    return (3, crop, crop)


if __name__ == "__main__":
    main()
