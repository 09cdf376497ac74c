"""The serving section of report.md, from reports/serving.json (benchmarks/serve.py, when it ran):
latency and throughput of the bundled Triton server per concurrency, beside in-process throughput."""

from __future__ import annotations

from dataclasses import asdict

from pipeline.artifacts.runtime import ServingLoad
from pipeline.core.markdown import table

COLUMNS = [
    ("model", "model", ""),
    ("concurrency", "concurrency", ""),
    ("requests", "requests", ""),
    ("errors", "errors", ""),
    ("lost", "lost", ""),
    ("swapped", "swapped", ""),
    ("p50_ms", "p50 ms", ".1f"),
    ("p90_ms", "p90 ms", ".1f"),
    ("p99_ms", "p99 ms", ".1f"),
    ("req_s", "req/s", ".0f"),
    ("vs", "vs in process, batch 8", ""),
]


def serving_lines(load: ServingLoad) -> list[str]:
    rows = [{**asdict(r), "vs": f"{r.req_s / load.in_process_batch8:.2f}x"} for r in load.rows]
    return [
        "## Served",
        "",
        f"`lio serve` (PyPI's bundled Triton server) running {load.candidate} on {load.cpu}, batch-1 requests from "
        "tritonclient's gRPC client on the same machine (`python benchmarks/serve.py`). `lio`: PNG bytes in, labels "
        "out (the server decodes and preprocesses); `lio_cpu`: the model's tensor in. In process, the same graph and "
        f"runtime: {load.in_process_batch8:.0f} img/s at batch 8. Plot: "
        "`dvc plots show reports/serving.json -x req_s -y p99_ms --template scatter`.",
        "",
        table(rows, COLUMNS),
    ]
