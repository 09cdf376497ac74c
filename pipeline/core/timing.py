"""Latency and throughput of a backend: (numpy batch -> logits) callables.

Latency is per call at batch 1 after warm-up (percentiles), throughput at the largest
profile batch; a `sync` callable (CUDA synchronisation) runs inside the timed region for
GPU backends so that queued work is counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: calls a p99 needs to mean something: with fewer, the 99th percentile is the slowest call or beyond
P99_CALLS = 100


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float | None  # None from fewer than P99_CALLS calls


def latency(fn: Callable, x, warmup: int, iters: int, sync: Callable = lambda: None) -> Latency:
    """p50 and p90 of `iters` timed calls after `warmup`; p99 only from at least P99_CALLS calls
    (None otherwise)."""
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return Latency(float(p50), float(p90), float(p99) if iters >= P99_CALLS else None)


def throughput(fn: Callable, x, iters: int, sync: Callable = lambda: None) -> float:
    fn(x)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync()
    return len(x) * iters / (time.perf_counter() - start)
