"""Training-step time and peak memory: plain ResNet-50 vs single-stage and multi-stage LIO,
eager and under `torch.compile` (train.compile), at the same batch and input size, side by
side in one run.

    python benchmarks/train.py                 # CPU: the embedded defaults (batch 24, 64 px), eager
    python benchmarks/train.py --compile       # CPU: also compiled (minutes of compiling on 2 cores)
    python benchmarks/train.py --compile --models "LIO multi-stage"   # the default's model only
    python benchmarks/train.py --gpu-paper     # GPU: 448 px, 64 images (16 groups of 4), bf16, eager + compiled

Peak memory is torch.cuda.max_memory_allocated on a GPU; on the CPU each case runs in a
fresh subprocess and the rise of the peak resident set size over the step is taken.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from pipeline.lio import LIOModel, group_positives, pair_index
from pipeline.train.compile import CompiledStep

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for a Python without the install
from pipeline.core import markdown  # noqa: E402
from pipeline.core.machine import cpu  # noqa: E402  (standard library only)

CASES = {"plain": [], "LIO layer4": ["layer4"], "LIO multi-stage": ["layer2", "layer3", "layer4"]}


def measure(
    stages: list[str],
    batch: int,
    size: int,
    pool: int,
    device: str,
    steps: int,
    compiled: bool = False,
    bf16: bool = False,
) -> dict:
    torch.manual_seed(0)
    model = LIOModel("resnet50", 200, stages, pool=pool).to(device).train()
    if device == "cuda":
        torch.set_float32_matmul_precision("high")  # as the training loop does on CUDA (the pseudo mask's products)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    if device == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 200, (batch,), device=device)
    pos = pair_index(group_positives(batch // 4, 3)).to(torch.device(device))
    net = CompiledStep(model) if compiled else model
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with autocast:
            loss = net(x, y, pos).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up (the optimizer state, and compiling)
    step()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return {"seconds": (time.perf_counter() - start) / steps, "peak_bytes": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-paper", action="store_true", help="448 px, batch 64, bf16, pool 2 on a GPU")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--compile", action="store_true", help="also compiled (always with --gpu-paper)")
    parser.add_argument("--models", nargs="+", choices=list(CASES), default=list(CASES), help="which models to time")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpu_paper:
        batch, size, pool, device, steps = 64, 448, 2, "cuda", args.steps or 20
    else:
        batch, size, pool, device, steps = 24, 64, 1, "cpu", args.steps or 5
    steps_kinds = ["eager", "compiled"] if args.compile or args.gpu_paper else ["eager"]
    # fp32 and bf16 autocast side by side (train.amp); on a GPU the loop always trains bf16
    modes = [f"{p} {k}" for k in steps_kinds for p in (["bf16"] if device == "cuda" else ["fp32", "bf16"])]
    if args.case:
        name, mode = args.case.split("|")
        precision, kind = mode.split()
        print(
            json.dumps(measure(CASES[name], batch, size, pool, device, steps, kind == "compiled", precision == "bf16"))
        )
        return
    results = {}
    for mode in modes:
        precision, kind = mode.split()
        for name in args.models:
            if device == "cuda":
                results[name, mode] = measure(
                    CASES[name], batch, size, pool, device, steps, kind == "compiled", precision == "bf16"
                )
            else:  # a fresh process per case: the peak resident set size is per process
                out = subprocess.run(
                    [sys.executable, __file__, "--case", f"{name}|{mode}", "--steps", str(steps)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                results[name, mode] = json.loads(out.strip().splitlines()[-1])
    where = torch.cuda.get_device_name() if device == "cuda" else f"{cpu()[0]}, {torch.get_num_threads()} threads"
    print(f"ResNet-50 training step, batch {batch} ({batch // 4} groups of P+1=4), {size} px, pool {pool}, {where}\n")
    first = modes[0]
    rows = []
    for (name, mode), r in results.items():
        plain = results.get(("plain", mode))
        rows.append(
            {
                "model": name,
                "step": mode,
                "ms": r["seconds"] * 1e3,
                "img_s": batch / r["seconds"],
                "vs_first": f"{results[name, first]['seconds'] / r['seconds']:.2f}x faster",
                "vs_plain": f"{r['seconds'] / plain['seconds']:.2f}x" if plain else "-",
                "mib": r["peak_bytes"] / 2**20,
            }
        )
    columns = [
        ("model", "model", ""),
        ("step", "step", ""),
        ("ms", "step ms", ".1f"),
        ("img_s", "images/s", ".1f"),
        ("vs_first", f"vs {first}, same model", ""),
        ("vs_plain", "vs plain, same step", ""),
        ("mib", "peak MiB", ".0f"),
    ]
    print(markdown.table(rows, columns))


if __name__ == "__main__":
    main()
