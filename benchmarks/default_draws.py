"""The embedded default trained on several seeds: does it fit its task on every draw?

    python benchmarks/default_draws.py --seeds 0 1 2
    python benchmarks/default_draws.py --seeds 3 4 --set train.epochs=20 --set train.amp=false
    python benchmarks/default_draws.py --seeds 0 1 2 --json reports/default_draws.json

Each seed runs `prepare` and `train` from this checkout's params.yaml (seed replaced, `--set`
applied as `dvc exp run -S` would) in its own scratch folder, so the checkout's data, models and
DVC cache are untouched. The seed changes the generated data, the initialisation and the
augmentation draws. Prints one row per seed (last-epoch train top-1, best validation top-1 and its
epoch, test top-1, training seconds, the precision it trained in) and their mean, minimum and spread,
with the CPU's name. Keep the machine quiet: the seconds are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for a Python without the install
from pipeline.core import markdown  # noqa: E402
from pipeline.core.machine import cpu  # noqa: E402  (standard library only)
from pipeline.study.runs import VAL_CURVE, read_curve  # noqa: E402  (the study reads the same plot)

ROOT = Path(__file__).resolve().parent.parent


def parse_set(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected key=value, e.g. train.epochs=20")
    return key, yaml.safe_load(value)


def params_for(params: Path, seed: int, overrides: list[tuple[str, object]]) -> dict:
    from pipeline.config.schema import apply_overrides

    data = yaml.safe_load(params.read_text())
    return apply_overrides(data, {"seed": seed, **dict(overrides)})


def draw(params: Path, seed: int, overrides: list[tuple[str, object]], keep: Path | None) -> dict:
    """Prepare and train one seed in a scratch folder; its numbers."""
    with tempfile.TemporaryDirectory(prefix=f"draw-s{seed}-") as tmp:
        work = keep / f"s{seed}" if keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / "params.yaml").write_text(yaml.safe_dump(params_for(params, seed, overrides), sort_keys=False))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = []
        for stage in ("prepare", "train"):
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "stages", stage, "--params", "params.yaml"],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
            )
            if proc.returncode:
                raise SystemExit(f"seed {seed}: `lio {stage}` failed:\n{proc.stderr[-2000:]}")
            log.append(proc.stdout)
        seconds = time.perf_counter() - start
        metrics = json.loads((work / "dvclive/metrics.json").read_text())
        curve = read_curve((work / VAL_CURVE).read_text())
        precision = next((line for line in log[1].splitlines() if line.startswith("train.amp")), "?")
        return {
            "seed": seed,
            "train_top1_last": metrics["train"]["top1"],
            "best_val": metrics["best"]["val_top1"],
            "best_epoch": metrics["best"]["epoch"],
            "epochs": len(curve),
            "val_curve": curve,
            "test_top1": metrics["test"]["top1"],
            "train_seconds": metrics["train_seconds"],
            "stage_seconds": seconds,
            "precision": "bf16" if "bf16" in precision else "fp32",
        }


COLUMNS = [
    ("seed", "seed", ""),
    ("train_top1_last", "train top-1, last epoch", ".3f"),
    ("best", "best val top-1 (epoch)", ""),
    ("test_top1", "test top-1", ".3f"),
    ("train_seconds", "train seconds", ".0f"),
    ("precision", "precision", ""),
]


def table(rows: list[dict]) -> str:
    shown = [{**r, "best": f"{r['best_val']:.3f} ({r['best_epoch']}/{r['epochs']})"} for r in rows]
    if len(rows) > 1:
        summaries = (("mean", statistics.mean), ("minimum", min), ("spread (max - min)", lambda v: max(v) - min(v)))
        for name, key in summaries:
            cells = {
                k: key([r[k] for r in rows]) for k in ("train_top1_last", "best_val", "test_top1", "train_seconds")
            }
            shown.append({**cells, "seed": name, "best": f"{cells['best_val']:.3f}", "precision": ""})
    return markdown.table(shown, COLUMNS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", type=parse_set, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", type=Path, help="also write the rows here (rewritten after every seed)")
    parser.add_argument("--keep", type=Path, help="train in KEEP/s<seed> and keep it (default: a deleted scratch)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="the params file to start from")
    args = parser.parse_args(argv)
    name, flags = cpu()
    settings = " ".join(f"{k}={v}" for k, v in args.overrides) or "params.yaml as it is"
    print(f"the default on seeds {args.seeds} ({settings}); {name} ({', '.join(flags) or 'no INT8 flags'})", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(draw(args.params.resolve(), seed, args.overrides, args.keep))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.json:
            args.json.write_text(json.dumps({"cpu": name, "overrides": settings, "rows": rows}, indent=2) + "\n")
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
