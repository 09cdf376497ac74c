"""The seeded ablation study: the paper's variants x seeds as DVC experiments, aggregated
into reports/study.json and reports/study.md.

Every run of a study has the same budget (the preset's epochs, images and resolution);
only the variant's own `lio` settings and the seed differ. The seed changes both the
generated data and the initialisation. Model selection stays on validation (as in every
run); the test split is read once per run, by the training stage and the report.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_json, write_text

#: variant -> its `-S` overrides (on top of the preset); "lio" is multi-stage LIO as in params.yaml.
VARIANTS = {
    "baseline": ["lio.stages=[]"],
    "oel-only": ["lio.scl=false"],
    "scl-only": ["lio.oel=false"],
    "lio": [],
    "lio-gm": ["lio.mask_source=gt"],
    # From scratch, alpha = 0.1 lets layer2's L_oel run away (M grows with the square of the
    # features, m' only linearly); 0.01 kept it falling in a seed-0 training run (README, study).
    "lio-alpha0.01": ["lio.alpha=0.01"],
}
#: variants that get the full seed count; the others may get fewer when the budget demands
MAIN_VARIANTS = ("baseline", "lio", "lio-alpha0.01")

_FAST_DEPLOY = ["export.precisions=[fp32]", "engine.precision=fp32", "report.iters=5", "report.throughput_iters=1"]
# The embedded default's 6 classes x 140 images are too easy at 112 px (a ResNet-18 baseline
# reached 0.996 test top-1, leaving nothing to measure); 16 classes x 40 images is a few-shot,
# fine-grained regime where the baseline reached 0.854 (validation still rising at epoch 14).
_FEW_SHOT = ["data.synthetic.classes=16", "data.synthetic.images_per_class=40"]
PRESETS = {
    # 2 CPU cores: every LIO map at least 4x4 (112 px -> 14/7/4), a ResNet-18 for the study alone.
    "cpu": {
        "description": "synthetic 16 classes x 40 images (24 train, 4 val, 12 test per class) at 112 px, "
        "ResNet-18 from scratch, 14 epochs of AdamW, batch 24, maps 14x14 / 7x7 / 4x4 (layer2/3/4)",
        "set": [
            *_FEW_SHOT,
            "data.synthetic.image_size=112",
            "data.transforms.resize=126",
            "data.transforms.crop=112",
            "model.arch=resnet18",
            "train.epochs=14",
            *_FAST_DEPLOY,
        ],
    },
    # The paper's geometry on one GPU: 448 px, maps pooled by 2 to 28/14/7, ResNet-50.
    "gpu": {
        "description": "synthetic 16 classes x 40 images at 448 px, ResNet-50 from scratch, lio.pool 2 "
        "(maps 28x28 / 14x14 / 7x7), 30 epochs, batch 48, bf16",
        "set": [
            *_FEW_SHOT,
            "data.synthetic.image_size=448",
            "data.transforms.resize=512",
            "data.transforms.crop=448",
            "model.arch=resnet50",
            "lio.pool=2",
            "train.epochs=30",
            "train.batch_size=48",
            "data.workers=8",
            *_FAST_DEPLOY,
        ],
    },
}
NAME = re.compile(r"^study-(?P<preset>[a-z0-9]+)-(?P<variant>[a-z0-9.-]+)-s(?P<seed>\d+)$")


class StudyError(PipelineError):
    pass


def grid(preset: str, seeds: int, other_seeds: int, variants: list[str] | None = None) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) for every run of the study (of `variants`, default all)."""
    if preset not in PRESETS:
        raise StudyError(f"unknown study preset {preset!r}; use one of {', '.join(PRESETS)}")
    unknown = sorted(set(variants or []) - set(VARIANTS))
    if unknown:
        raise StudyError(f"unknown variant(s) {', '.join(unknown)}; use some of {', '.join(VARIANTS)}")
    runs = []  # seed-major, so that a study cut short still has paired runs of every variant
    for seed in range(max(seeds, other_seeds)):
        for variant, overrides in VARIANTS.items():
            if variants and variant not in variants:
                continue
            if seed < (seeds if variant in MAIN_VARIANTS else other_seeds):
                runs.append(
                    (f"study-{preset}-{variant}-s{seed}", [f"seed={seed}", *PRESETS[preset]["set"], *overrides])
                )
    return runs


def queue(
    preset: str, seeds: int, other_seeds: int, variants: list[str] | None = None, dvc: list[str] | None = None
) -> list[str]:
    """Queues every run with `dvc exp run --queue`; returns the names."""
    dvc = dvc or [sys.executable, "-m", "dvc"]
    names = []
    for name, overrides in grid(preset, seeds, other_seeds, variants):
        args = [*dvc, "exp", "run", "--queue", "--name", name]
        for o in overrides:
            args += ["-S", o]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise StudyError(f"`{' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
        names.append(name)
    return names


def experiments(shown) -> Iterator[tuple[str, dict]]:
    """(name, data) of every named experiment in `dvc exp show --json`, whatever the nesting."""
    if isinstance(shown, dict):
        data = shown.get("data")
        if isinstance(data, dict) and shown.get("name") and "params" in data:
            yield shown["name"], data
        for v in shown.values():
            yield from experiments(v)
    elif isinstance(shown, list):
        for v in shown:
            yield from experiments(v)


def _metric(data: dict, file: str, *keys):
    node = (data.get("metrics", {}).get(file) or {}).get("data") or {}
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def records(shown, preset: str) -> list[dict]:
    """One record per finished study run of `preset` (runs without test metrics are still going or failed)."""
    out = {}
    for name, data in experiments(shown):
        m = NAME.match(name)
        if not m or m["preset"] != preset or m["variant"] not in VARIANTS:
            continue
        top1 = _metric(data, "dvclive/metrics.json", "test", "top1")
        if top1 is None:
            continue
        out[name] = {
            "name": name,
            "variant": m["variant"],
            "seed": int(m["seed"]),
            "test_top1": top1,
            "best_val_top1": _metric(data, "dvclive/metrics.json", "best", "val_top1"),
            "best_epoch": _metric(data, "dvclive/metrics.json", "best", "epoch"),
            "train_seconds": _metric(data, "dvclive/metrics.json", "train_seconds"),
            "localisation": _metric(data, "reports/metrics.json", "localisation") or {},
        }
    return sorted(out.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def aggregate(runs: list[dict]) -> dict:
    """Per variant: top-1 mean/std over seeds, paired difference to the baseline (same seed),
    localisation means per stage, and mean training time."""
    baseline = {r["seed"]: r["test_top1"] for r in runs if r["variant"] == "baseline"}
    variants = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        mean, std = _mean_std([r["test_top1"] for r in mine])
        diffs = {r["seed"]: r["test_top1"] - baseline[r["seed"]] for r in mine if r["seed"] in baseline}
        dmean, dstd = _mean_std(list(diffs.values()))
        loc: dict[str, dict[str, float | None]] = {}
        for stage in sorted({s for r in mine for s in r["localisation"]}):
            keys = sorted({k for r in mine for k in r["localisation"].get(stage, {})})
            loc[stage] = {
                k: _mean_std([r["localisation"][stage][k] for r in mine if stage in r["localisation"]])[0] for k in keys
            }
        variants[variant] = {
            "seeds": sorted(r["seed"] for r in mine),
            "test_top1_mean": mean,
            "test_top1_std": std,
            "diff_vs_baseline_per_seed": diffs,
            "diff_vs_baseline_mean": dmean,
            "diff_vs_baseline_std": dstd,
            "val_top1_mean": _mean_std([r["best_val_top1"] for r in mine if r["best_val_top1"] is not None])[0],
            "train_seconds_min": min((r["train_seconds"] for r in mine if r["train_seconds"]), default=None),
            "localisation": loc,
        }
    return variants


def _f(v, fmt=".3f", signed=False) -> str:
    if v is None:
        return "n/a"
    return format(v, ("+" if signed else "") + fmt)


def markdown(preset: str, runs: list[dict], variants: dict, command: str, machine: str) -> str:
    lines = [
        f"# LIO study ({preset} preset)",
        "",
        f"Setting: {PRESETS[preset]['description']}. Overrides of every run: "
        f"`{' '.join('-S ' + s for s in PRESETS[preset]['set'])}`.",
        "",
        f"Command: `{command}`. Machine: {machine}.",
        "",
        "Test top-1 of the best-validation epoch; difference to the baseline paired by seed (same data, "
        "same initialisation seed). Mean and sample standard deviation over seeds. Train s: wall time of the "
        "training stage, the fastest run of the variant (runs that shared the machine with other work took longer).",
        "",
        "| variant | seeds | test top-1 | std | val top-1 | vs baseline (mean) | std | per seed | train s (min) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in variants.items():
        per_seed = ", ".join(f"s{s}: {d:+.3f}" for s, d in sorted(v["diff_vs_baseline_per_seed"].items()))
        lines.append(
            f"| {variant} | {len(v['seeds'])} | {_f(v['test_top1_mean'])} | {_f(v['test_top1_std'])} | "
            f"{_f(v['val_top1_mean'])} | {_f(v['diff_vs_baseline_mean'], signed=True)} | "
            f"{_f(v['diff_vs_baseline_std'])} | {per_seed or 'n/a'} | {_f(v['train_seconds_min'], '.0f')} |"
        )
    loc_keys = (
        "iou m'",
        "iou M",
        "iou all-ones",
        "iou centre prior",
        "iou random",
        "iou ceiling",
        "pointing",
        "pointing chance",
    )
    loc_rows = []
    for variant, v in variants.items():
        for stage, d in v["localisation"].items():
            cells = [variant, stage, _f(d.get("N"), ".0f"), *(_f(d.get(k)) for k in loc_keys)]
            loc_rows.append("| " + " | ".join(cells) + " |")
    if loc_rows:
        lines += [
            "",
            "Localisation on the test images (mean over seeds; IoU after min-max normalisation and "
            "threshold 0.5; see reports/report.md of any run for the definitions):",
            "",
            "| variant | stage | N | IoU m' | IoU M | all-ones | centre prior | random | ceiling | pointing | "
            "pointing chance |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *loc_rows,
        ]
    lines += ["", "Runs:", "", "| run | test top-1 | best val top-1 | best epoch | train s |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['name']} | {r['test_top1']:.3f} | {_f(r['best_val_top1'])} | {r['best_epoch']} | "
        f"{_f(r['train_seconds'], '.0f')} |"
        for r in runs
    ]
    return "\n".join(lines) + "\n"


def collect(preset: str, out_dir: Path, command: str, machine: str, dvc: list[str] | None = None) -> dict:
    """Reads `dvc exp show --json -A` and writes study.json and study.md under `out_dir`."""
    dvc = dvc or [sys.executable, "-m", "dvc"]
    proc = subprocess.run([*dvc, "exp", "show", "--json", "-A"], capture_output=True, text=True)
    if proc.returncode:
        raise StudyError(f"`dvc exp show --json -A` failed: {proc.stderr.strip()}")
    runs = records(json.loads(proc.stdout), preset)
    variants = aggregate(runs)
    result = {
        "preset": preset,
        "setting": PRESETS[preset],
        "command": command,
        "machine": machine,
        "variants": variants,
        "runs": runs,
    }
    write_json(out_dir / "study.json", result)
    write_text(out_dir / "study.md", markdown(preset, runs, variants, command, machine))
    return result
