"""Can the fast suite fail? Applies named mutations, one at a time, to a scratch copy of the
repository and runs the fast tests that should catch each; a mutation that survives is a hole.

    python tools/mutate.py                 # every mutation, its likely tests first (a few minutes)
    python tools/mutate.py --full          # each against the whole fast suite (pytest -m "not slow")
    python tools/mutate.py wrap-deleted    # only the named ones

The copy is made from `git ls-files` (the working tree's contents), so nothing here is edited.
Exit status 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from pipeline.core import markdown  # noqa: E402  (standard library only)

#: name -> (file, text, replacement, the tests most likely to catch it)
MUTATIONS = {
    "gate-always-passes": (
        "pipeline/config/export.py",
        "return bool(top1 >=",
        "return True or bool(top1 >=",
        ["tests/test_export.py"],
    ),
    "rule-compared-the-wrong-way": (
        "pipeline/config/export.py",
        "top1 >= self.min_top1_ratio * top1_fp32",
        "top1_fp32 >= self.min_top1_ratio * top1",
        ["tests/test_export.py"],
    ),
    "agreement-floor-ignored": (
        "pipeline/config/export.py",
        " and agreement >= self.min_agreement)",
        ")",
        ["tests/test_export.py"],
    ),
    "zero-width-interval": (
        "pipeline/core/metrics.py",
        "    if half == 0:\n",
        "    if False:\n",
        ["tests/test_export.py"],
    ),
    "wrap-deleted": (
        "pipeline/lio/scl.py",
        "gap = torch.where(gap < 0, gap + 1, gap)",
        "gap = gap",
        ["tests/test_lio_math.py"],
    ),
    "param-dropped": ("dvc.yaml", "      - data.val_fraction\n", "", ["tests/test_dvc_yaml.py"]),
    "optimizer-step-skipped": (
        "pipeline/train/loop.py",
        "        optimizer.step()\n",
        "        pass  # optimizer.step() skipped\n",
        ["tests/test_train.py"],
    ),
    "schedule-constant": (
        "pipeline/train/optim.py",
        "    def factor(step: int) -> float:\n",
        "    def factor(step: int) -> float:\n        return 1.0\n",
        ["tests/test_train.py"],
    ),
    "pair-routes-swapped": (
        "pipeline/lio/oel.py",
        "row_src, inverse[row_src], col_src, inverse[col_src]",
        "col_src, inverse[col_src], row_src, inverse[row_src]",
        ["tests/test_compile.py", "tests/test_lio_math.py"],
    ),
    "code-grouping-anchor-major": (
        "pipeline/lio/sampler.py",
        "view(num_groups, size).t().flatten()",
        "view(num_groups, size).flatten()",
        ["tests/test_sampler.py"],
    ),
    "warm-up-timed": (
        "pipeline/core/timing.py",
        "    for _ in range(warmup):\n        fn(x)\n",
        "",
        ["tests/test_report.py"],
    ),
    "fallback-although-selection-accepted": (
        "pipeline/deploy/export.py",
        "if not tries[-1].passed and recipe.keep_fp32",
        "if recipe.keep_fp32",
        ["tests/test_qat.py", "tests/test_export.py"],
    ),
    "fallback-skipped": (
        "pipeline/deploy/export.py",
        "if not tries[-1].passed and recipe.keep_fp32",
        "if False and recipe.keep_fp32",
        ["tests/test_export.py"],
    ),
    "fallback-not-the-fewest": (
        "pipeline/deploy/int8_fallback.py",
        "    while high - low > 1:\n",
        "    while False:\n",
        ["tests/test_export.py"],
    ),
    "fallback-ranked-backwards": (
        "pipeline/deploy/int8_fallback.py",
        "key=lambda s: -s.error_removed",
        "key=lambda s: s.error_removed",
        ["tests/test_export.py"],
    ),
    "ort-kept-layer-reads-int8": (
        "pipeline/deploy/quantize.py",
        " + input_sources(graph, keep_layers)",
        "",
        ["tests/test_export.py"],
    ),
    "amp-guessed-not-detected": (
        "pipeline/train/precision.py",
        '    return ", ".join(found) or None',
        '    return "avx512f"',
        ["tests/test_precision.py"],
    ),
    "unconverged-qat-ships": (
        "pipeline/deploy/export.py",
        "if reason:  # a fine-tuning",
        "if False:  # a fine-tuning",
        ["tests/test_qat.py"],
    ),
    "modelopt-rewrites-the-fp32-file": (
        "pipeline/deploy/convert.py",
        "            onnx_path=str(source),",
        "            onnx_path=str(fp32),",
        ["tests/test_export.py"],
    ),
    "augment-drawn-per-process": (
        "pipeline/data/dataset.py",
        "        generator.manual_seed(int(draw))\n",
        "",
        ["tests/test_data.py"],
    ),
    "distractors-touch-the-object": (
        "pipeline/data/synthetic.py",
        "> 2 * reach + 2 for",
        "> 0 for",
        ["tests/test_data.py"],
    ),
    "siblings-move-every-part": (
        "pipeline/data/synthetic.py",
        "pts[rng.integers(len(PARTS))] += rng.uniform(-SIBLING_STEP, SIBLING_STEP, size=2)",
        "pts += rng.uniform(-SIBLING_STEP, SIBLING_STEP, size=pts.shape)",
        ["tests/test_data.py"],
    ),
    "cpu-choice-the-slowest": (
        "pipeline/deploy/choice.py",
        "best = max(cpu, key=lambda r: r.throughput)",
        "best = min(cpu, key=lambda r: r.throughput)",
        ["tests/test_report.py"],
    ),
    "gate-without-validation": (
        "pipeline/data/heldout.py",
        'gate = split["val"] + split["gate"]',
        'gate = split["gate"] or split["val"][:1]',
        ["tests/test_data.py", "tests/test_export.py"],
    ),
    "study-convergence-counts-late-epochs": (
        "pipeline/study/aggregate.py",
        "r.best_epoch <= 0.8 * r.epochs",
        "r.best_epoch <= r.epochs",
        ["tests/test_study.py"],
    ),
    "device-flip-never": (
        "pipeline/data/device_augment.py",
        "torch.rand(b, device=device) < 0.5 if self.hflip",
        "torch.rand(b, device=device) < 0.0 if self.hflip",
        ["tests/test_device_augment.py"],
    ),
}


def scratch_copy(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help=f"mutations to apply (default: all of {', '.join(MUTATIONS)})")
    parser.add_argument("--full", action="store_true", help="run the whole fast suite for each mutation")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(MUTATIONS))
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; choose from {', '.join(MUTATIONS)}")
    survived = []
    columns = [("name", "mutation", ""), ("path", "file", ""), ("where", "tests run", ""), ("result", "result", "")]
    columns.append(("seconds", "seconds", ".0f"))
    print(markdown.head(columns), flush=True)
    for name in args.names or list(MUTATIONS):
        path, text, replacement, tests = MUTATIONS[name]
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp)
            scratch_copy(copy)
            source = (copy / path).read_text()
            if source.count(text) != 1:
                result = "the text to mutate is not there once: update tools/mutate.py"
                print(markdown.line({"name": name, "path": path, "where": "-", "result": result}, columns))
                survived.append(name)
                continue
            (copy / path).write_text(source.replace(text, replacement))
            # in one process (-n 0): under pytest-xdist, -x stops a failing run with exit status 2, not 1
            cmd = [sys.executable, "-m", "pytest", "-m", "not slow", "-x", "-q", "-n", "0", "-p", "no:cacheprovider"]
            cmd += [] if args.full else tests
            env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's package, also in spawned interpreters
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
        killed = proc.returncode == 1  # 1: tests failed; 0: all passed; others: the run itself broke
        result = "killed" if killed else ("SURVIVED" if proc.returncode == 0 else f"error (exit {proc.returncode})")
        if not killed:
            survived.append(name)
        where = "the fast suite" if args.full else ", ".join(tests)
        row = {"name": name, "path": path, "where": where, "result": result, "seconds": seconds}
        print(markdown.line(row, columns), flush=True)
    total = len(args.names or MUTATIONS)
    print(f"\n{len(survived)} of {total} mutations survived" + (f": {survived}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
