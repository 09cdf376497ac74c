"""The CPU runtimes section of report.md, from reports/runtime.json alone: every candidate with its gate
and speed, side by side with ONNX Runtime FP32 in the same run, and what was chosen, why, on which CPU."""

from __future__ import annotations

from pipeline.artifacts.runtime import CpuCandidate, RuntimeChoice
from pipeline.core.markdown import table

COLUMNS = [
    ("name", "candidate (shipped in bold)", ""),
    ("graph", "graph", ""),
    ("device", "runs as", ""),
    ("status", "gate", ""),
    ("ratio", "top-1 / FP32's", ""),
    ("p50_ms", "p50 ms (batch 1)", ".2f"),
    ("throughput", "img/s", ".0f"),
    ("speedup", "vs ONNX Runtime FP32", ""),
]


def _row(c: CpuCandidate, fp32: CpuCandidate, chosen: str) -> dict:
    return {
        "name": f"**{c.name}**" if c.name == chosen else c.name,
        "graph": f"`{c.graph}`",
        "device": c.device or "—",
        "status": c.status + (f": {c.reason}" if c.reason else ""),
        "ratio": f"{c.gate.top1_ratio:.4f}" if c.gate else ("1 (the reference)" if c.status == "reference" else "—"),
        "p50_ms": c.p50_ms,
        "throughput": c.throughput,
        "speedup": f"{c.throughput / fp32.throughput:.2f}x" if c.throughput and fp32.throughput else "—",
    }


def runtime_lines(choice: RuntimeChoice) -> list[str]:
    fp32 = choice.candidate("onnxruntime-fp32")
    return [
        "## CPU runtimes",
        "",
        f"Measured on {choice.cpu} ({', '.join(choice.flags) or 'no INT8 or bf16 instruction sets'}), "
        f"{choice.threads} threads, {choice.streams} OpenVINO stream; throughput at batch {choice.batch}. Each "
        "candidate is gated by its ONNX variant's rule on the same held-out images as the export.",
        "",
        table([_row(c, fp32, choice.chosen) for c in choice.candidates], COLUMNS),
        "",
        f"Chosen: **{choice.chosen}**, {choice.why}.",
    ]
