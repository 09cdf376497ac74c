"""pseudo_mask (pair-shared, chunked) against the naive version that holds all B*P
similarity matrices at once: time and peak extra memory, side by side in one run.

    python benchmarks/oel.py [--sizes 7,14,28,56] [--channels 512,1024,2048]
    python benchmarks/oel.py --backward [--sizes 14,28,56] [--channels 512]

--backward times forward + backward: pseudo_mask(grad=True) (the argmax-saving autograd
Function) against plain autograd through the naive version (what `lio.target_grad` costs).

    python benchmarks/oel.py --precision       # the paper's three stages at batch 64: fp32, TF32, bf16

--precision: forward + backward of M at layer2/3/4 of a 448 px ResNet-50 pooled by 2 (N = 28,
14, 7), with float32 products, TF32 products (CUDA; what training uses there) and features
rounded to bf16; each with its largest error against float64 as a fraction of M's spatial
contrast (max - min per image), and the share of images whose argmax cell is unchanged.

Peak memory: torch.cuda.max_memory_allocated on a GPU; on the CPU, each case runs in a
fresh subprocess and the peak resident set size above the inputs is taken.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from pipeline.core import markdown
from pipeline.lio.oel import pair_index, pseudo_mask
from pipeline.lio.sampler import group_positives

B, P = 16, 3


def naive(feats: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    b, c, n, _ = feats.shape
    f = feats.flatten(2)
    others = f[positives]  # [B, P, C, L]
    sim = torch.einsum("bcl,bpcm->bplm", f, others)  # all B*P matrices at once
    return (sim.amax(dim=3) / c).mean(1).view(b, n, n)


def forward_backward(fn):
    def run(feats: torch.Tensor, positives: torch.Tensor) -> None:
        x = feats.detach().requires_grad_(True)
        fn(x, positives).sum().backward()

    return run


IMPLS = {"chunked": pseudo_mask, "naive": torch.no_grad()(naive)}
GRAD_IMPLS = {
    "chunked": forward_backward(lambda f, p: pseudo_mask(f, p, grad=True)),
    "naive": forward_backward(naive),  # autograd through every similarity matrix
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(impl: str, n: int, c: int, device: str, repeats: int, backward: bool = False) -> dict:
    """Peak extra memory of one call above the inputs, then the best of `repeats` timings."""
    feats = torch.randn(B, c, n, n, device=device)
    positives = group_positives(B // (P + 1), P).to(device)
    fn = (GRAD_IMPLS if backward else IMPLS)[impl]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(feats, positives)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:  # a fresh process per case, so the high-water mark belongs to this call
        base = peak_rss()
        fn(feats, positives)
        peak = peak_rss() - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(feats, positives)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_bytes": max(peak, 0)}


PAPER_STAGES = (("layer2", 28, 512), ("layer3", 14, 1024), ("layer4", 7, 2048))


def precision_table(device: str, batch: int = 64) -> None:
    """fp32 / TF32 / bf16-rounded features: time of forward + backward and M's error."""
    pr = pair_index(group_positives(batch // (P + 1), P)).to(torch.device(device))
    print(f"{torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, batch {batch}, P={P}\n")
    columns = [
        ("stage", "stage", ""),
        ("n", "N", ""),
        ("c", "C", ""),
        ("mode", "mode", ""),
        ("ms", "fwd+bwd ms", ".2f"),
        ("error", "max error / contrast", ".1e"),
        ("same", "argmax unchanged", ".0%"),
    ]
    print(markdown.head(columns))
    for stage, n, c in PAPER_STAGES:
        g = torch.Generator(device=device).manual_seed(0)
        feats = torch.randn(batch, c, n, n, device=device, generator=g).relu()  # post-ReLU, as a stage map
        reference = pseudo_mask(feats.double(), pr)
        contrast = (reference.flatten(1).amax(1) - reference.flatten(1).amin(1)).clamp_min(1e-12)
        modes = {"fp32": (feats, "highest"), "bf16 features": (feats.bfloat16(), "highest")}
        if device == "cuda":
            modes["tf32"] = (feats, "high")
        for mode, (x, precision) in modes.items():
            torch.set_float32_matmul_precision(precision)
            x = x.detach().requires_grad_(True)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                m = pseudo_mask(x, pr, grad=True)
                m.sum().backward()
                if device == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            error = ((m.detach().double() - reference).flatten(1).abs().amax(1) / contrast).max().item()
            same = (m.detach().flatten(1).argmax(1) == reference.flatten(1).argmax(1)).float().mean().item()
            row = {"stage": stage, "n": n, "c": c, "mode": mode, "ms": min(times) * 1e3, "error": error, "same": same}
            print(markdown.line(row, columns))
        torch.set_float32_matmul_precision("highest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="7,14,28,56")
    parser.add_argument("--channels", default="512,1024,2048")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backward", action="store_true", help="time forward + backward (lio.target_grad)")
    parser.add_argument("--precision", action="store_true", help="M's error and time in fp32, TF32 and bf16")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # impl,n,c: one CPU measurement in this process
    args = parser.parse_args()
    if args.precision:
        precision_table(args.device)
        return
    if args.case:
        impl, n, c = args.case.split(",")
        repeats = 2 if int(n) < 56 else 1
        print(json.dumps(measure(impl, int(n), int(c), "cpu", repeats=repeats, backward=args.backward)))
        return
    rows = []
    for n in map(int, args.sizes.split(",")):
        for c in map(int, args.channels.split(",")):
            got = {}
            for impl in IMPLS:
                if args.device == "cuda":
                    got[impl] = measure(impl, n, c, "cuda", repeats=5, backward=args.backward)
                else:
                    out = subprocess.run(
                        [sys.executable, __file__, "--case", f"{impl},{n},{c}", *(["--backward"] * args.backward)],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    got[impl] = json.loads(out.strip().splitlines()[-1])
            rows.append((n, c, got))
            a, b = got["chunked"], got["naive"]
            print(
                f"N={n:>2} C={c:>4}  chunked {a['seconds'] * 1e3:8.1f} ms {a['peak_bytes'] / 2**20:8.1f} MiB | "
                f"naive {b['seconds'] * 1e3:8.1f} ms {b['peak_bytes'] / 2**20:8.1f} MiB | "
                f"time x{a['seconds'] / b['seconds']:.2f}  memory x{a['peak_bytes'] / max(b['peak_bytes'], 1):.3f}",
                flush=True,
            )
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    what = "forward + backward (grad=True vs naive autograd)" if args.backward else "forward"
    print(f"\n{device}, B={B}, P={P}, float32, {what}. Ratios are chunked / naive (lower is better).\n")
    columns = [
        ("n", "N", ""),
        ("c", "C", ""),
        ("a_ms", "chunked ms", ".1f"),
        ("b_ms", "naive ms", ".1f"),
        ("time", "time ratio", ".2f"),
        ("a_mib", "chunked peak MiB", ".1f"),
        ("b_mib", "naive peak MiB", ".1f"),
        ("memory", "memory ratio", ".3f"),
    ]
    table = []
    for n, c, got in rows:
        a, b = got["chunked"], got["naive"]
        table.append(
            {
                "n": n,
                "c": c,
                "a_ms": a["seconds"] * 1e3,
                "b_ms": b["seconds"] * 1e3,
                "time": a["seconds"] / b["seconds"],
                "a_mib": a["peak_bytes"] / 2**20,
                "b_mib": b["peak_bytes"] / 2**20,
                "memory": a["peak_bytes"] / max(b["peak_bytes"], 1),
            }
        )
    print(markdown.table(table, columns))


if __name__ == "__main__":
    main()
