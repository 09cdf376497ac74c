"""`train.amp`: bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

On a CPU only native bf16 pays: AVX512-BF16 or AMX run bf16 convolutions at up to twice fp32's
rate (docs/measured-log.md), while a CPU without them emulates bf16 and runs slower than fp32. So the
CPU's own flags decide (Linux /proc/cpuinfo), never its vendor or model.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from pipeline.core.errors import TrainingError

#: CPU flags (as /proc/cpuinfo spells them) that compute bf16 natively
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first processor's flags; empty where the file does not exist (not Linux)."""
    if not cpuinfo.exists():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device: torch.device, flags: set[str] | None = None) -> str | None:
    """What computes bf16 natively on `device` (e.g. "avx512_bf16"), or None."""
    if device.type == "cuda":
        return "CUDA" if torch.cuda.is_bf16_supported() else None
    found = [f for f in BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    return ", ".join(found) or None


def resolve_amp(setting: str, device: torch.device, flags: set[str] | None = None) -> tuple[bool, str]:
    """(bf16 autocast on?, the one line that says which precision trains and why). `true` on
    hardware without native bf16 is an error; `auto` falls back to fp32 and says so."""
    native = native_bf16(device, flags)
    if setting == "false":
        return False, "train.amp: false: training in fp32"
    if native:
        return True, f"train.amp: {setting}: training under bf16 autocast ({device.type} has native bf16: {native})"
    what = "this GPU" if device.type == "cuda" else f"this CPU (no {' or '.join(BF16_FLAGS)} flag)"
    if setting == "true":
        raise TrainingError(
            f"train.amp: true asks for bf16 autocast, but {what} has no native bf16 and would run it slower than "
            "fp32; set train.amp: auto (fp32 here) or false"
        )
    return False, f"train.amp: auto: training in fp32 ({what} has no native bf16)"


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on `device` when `enabled` (resolve_amp decided it); no loss scaling is needed."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()
