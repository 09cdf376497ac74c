"""The CPU runtime, chosen on the machine: every candidate of the registry gated by the export's judge
(the same rule, tolerance and images as the ONNX variants) and timed at batch 1 and `engine.max_batch`
in one run; the fastest that passed ships. Never a guess from the vendor string: on a CPU where
OpenVINO is slower or absent, ONNX Runtime wins by measurement.

On a serving machine that is not the one that ran the stage (`for_this_cpu`), the recorded choice is
followed when the CPU is the same (name and instruction sets); elsewhere the candidates that passed
their gates are timed again at start, briefly, and the fastest runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.runtime import CpuCandidate, RuntimeChoice
from pipeline.config.export import Gate
from pipeline.core.machine import cpu, threads
from pipeline.core.timing import latency, throughput
from pipeline.data.heldout import HeldOut
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy.judge import Judge
from pipeline.deploy.onnx_runtime import read_meta
from pipeline.deploy.runners import Backend
from pipeline.serve.candidates import CANDIDATES, Candidate
from pipeline.serve.runtimes import STREAMS, RuntimeUnavailable


def choose(
    onnx: dict[str, Path],
    export: ExportReport,
    prepared: Path,
    gates: dict[str, Gate],
    calib_images: int,
    seed: int,
    batch: int,
    timing: tuple[int, int, int],
) -> RuntimeChoice:
    """Gate and time every candidate (`timing`: warm-up calls, timed batch-1 calls, timed `batch` calls)."""
    rows, _ = read_manifest(prepared)
    sets = HeldOut.of(rows, calib_images, seed).decode(eval_preset(read_meta(onnx["fp32"]).preprocess))
    reference = CANDIDATES[0].open(onnx["fp32"])
    judge = Judge.of(reference, sets, gates)
    x = np.resize(sets.test.pixels, (batch, *sets.test.pixels.shape[1:]))
    measured = [measure(c, onnx, export, judge, x, timing) for c in tqdm(CANDIDATES, desc="CPU runtimes")]
    name, flags = cpu()
    return RuntimeChoice(name, flags, threads(), STREAMS, batch, measured, *pick(measured, batch))


def pick(measured: list[CpuCandidate], batch: int) -> tuple[str, str]:
    """The fastest candidate at `batch` among those that passed their gates (the reference always
    does), and why, in words."""
    usable = [c for c in measured if c.usable]
    best = max(usable, key=lambda c: c.throughput or 0.0)
    faster = [c.name for c in measured if not c.usable and (c.throughput or 0) > (best.throughput or 0)]
    why = (
        f"the fastest at batch {batch} of the {len(usable)} candidates that passed their gates on this CPU"
        if len(usable) > 1
        else "the only candidate that passed its gate"
    )
    return best.name, why + (f" ({', '.join(faster)} ran faster and failed)" if faster else "")


def measure(
    c: Candidate, onnx: dict[str, Path], export: ExportReport, judge: Judge, x: np.ndarray, timing: tuple[int, int, int]
) -> CpuCandidate:
    """One candidate: unavailable (with why), or gated and timed."""
    path = onnx[c.precision]
    record = CpuCandidate(c.name, c.runtime, c.precision, str(path), c.hint, "unavailable")  # type: ignore[arg-type]
    if not export.usable(c.precision) or not path.exists():
        why = "rejected by its gate in export" if c.precision in export.variants else "not exported"
        return replace(record, reason=f"{path}: {why} (reports/export.json)")
    try:
        backend = c.open(path)
    except RuntimeUnavailable as e:
        return replace(record, reason=str(e))
    record = replace(record, device=backend.device)
    try:
        if c.gate is None:
            record = replace(record, status="reference")
        else:
            verdict = judge.gate(backend, c.gate)
            record = replace(record, gate=verdict, status="passed" if verdict.passed else "rejected")
            if not verdict.passed:
                record = replace(record, reason=f"missed its gate (export.gates.{c.gate}) on {verdict.images} images")
        p50_ms, img_s = speed(backend, x, timing)  # a rejected one too: the report shows what it would have cost
    except (RuntimeError, ValueError) as e:  # a runtime that loads a graph and then fails on it
        if c.gate is None:
            raise
        why = f"{c.runtime} failed running {path}: {str(e).strip().splitlines()[0][:200]}"
        return replace(record, status="unavailable", gate=None, reason=why)
    return replace(record, p50_ms=p50_ms, throughput=img_s)


def speed(backend: Backend, x: np.ndarray, timing: tuple[int, int, int]) -> tuple[float, float]:
    """Batch-1 p50 (ms) and img/s at len(x)."""
    warmup, iters, throughput_iters = timing
    return latency(backend.run, x[:1], warmup, iters).p50_ms, throughput(backend.run, x, throughput_iters)
