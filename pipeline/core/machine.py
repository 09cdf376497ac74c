"""The machine a number was measured on (benchmarks print it beside their tables; the study records
it per run): the CPU's name and INT8 instruction sets, from the standard library only."""

from __future__ import annotations

import os
import platform
from pathlib import Path

INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu() -> tuple[str, list[str]]:
    """The CPU's model name and which INT8- and bf16-relevant instruction sets it has (Linux /proc/cpuinfo)."""
    info = Path("/proc/cpuinfo")
    if not info.exists():
        return platform.processor() or platform.machine(), []
    text = info.read_text()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return name, [f for f in INT8_FLAGS if f in flags]


def threads() -> int:
    """Threads per inference, set once for every CPU runtime: OMP_NUM_THREADS where set (it caps
    torch's too), else the cores this process may run on."""
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
