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

from scipy import stats

from pipeline.errors import PipelineError
from pipeline.evaluate.localisation import SCORES
from pipeline.io import write_json, write_text

#: variant -> its `-S` overrides (on top of the preset). Every LIO setting a variant depends on
#: is spelled out, so a variant means the same thing whatever params.yaml's defaults are.
_GRAD, _DETACHED = "lio.target_grad=true", "lio.target_grad=false"
_GROUP = "lio.positives=same_class"  # M against the image's own group (the paper)
VARIANTS = {
    "baseline": ["lio.stages=[]"],
    "lio": [_GRAD, "lio.scl_weights=extent", _GROUP],  # multi-stage, gradient through M (the released code)
    "lio-detached": [_DETACHED, "lio.scl_weights=extent", _GROUP],  # M as a constant target (the first study's LIO)
    "oel-only": ["lio.scl=false", _GRAD, _GROUP],
    "scl-only": ["lio.oel=false", "lio.scl_weights=extent", _GROUP],  # SCL's guide is M, without gradient either way
    "lio-gm": ["lio.mask_source=gt", "lio.scl_weights=extent", _GROUP],
    "lio-binary": [_GRAD, "lio.scl_weights=binary", _GROUP],  # the released code's SCL weights, m' > mean(m')
    # LIO with M against the released code's batch rows (images of other groups), not the image's class
    "lio-batch": [_GRAD, "lio.scl_weights=extent", "lio.positives=batch"],
}
#: variant -> the variant it differs from in one setting, compared paired by seed besides the baseline
REFERENCES = {"lio-batch": "lio"}
#: variants that get the full seed count; the others get `other_seeds`
MAIN_VARIANTS = ("baseline", "lio")
#: variants that can become params.yaml's default: every LIO setting that needs no true masks
CANDIDATES = ("lio", "lio-detached", "oel-only", "scl-only", "lio-binary", "lio-batch")

_FAST_DEPLOY = ["export.precisions=[fp32]", "engine.precision=fp32", "report.iters=5", "report.throughput_iters=1"]
# The embedded default's 6 classes x 140 images are too easy at 112 px (a ResNet-18 baseline
# reached 0.996 test top-1, leaving nothing to measure); 16 classes x 40 images is a few-shot,
# fine-grained regime where the baseline reached 0.854 (validation still rising at epoch 14).
# 52 extra test images per class make the test split 16 x 64 = 1024 images (binomial error
# about 1 point instead of 2) without changing the training or validation images.
_FEW_SHOT = [
    "data.synthetic.classes=16",
    "data.synthetic.images_per_class=40",
    "data.synthetic.extra_test_per_class=52",
]
_112PX = ["data.synthetic.image_size=112", "data.transforms.resize=126", "data.transforms.crop=112"]
#: The transfer regime: arrangements from one fixed stream; the first PRETRAIN_CLASSES of it
#: pre-train a backbone once (`lio study pretrain`), the next 16 are the study's classes.
LAYOUT_SEED, PRETRAIN_CLASSES = 1000, 48
PRETRAINED = Path("models/pretrained/transfer-resnet18.pt")
PRESETS = {
    # 2 CPU cores: every LIO map at least 4x4 (112 px -> 14/7/4), a ResNet-18 for the study alone.
    "cpu": {
        "description": "synthetic 16 classes x 40 images (24 train, 4 val, 12 + 52 extra test per class: 1024 test "
        "images) at 112 px, ResNet-18 from scratch, 14 epochs of AdamW, batch 24, maps 14x14 / 7x7 / 4x4",
        "set": [*_FEW_SHOT, *_112PX, "model.arch=resnet18", "train.epochs=14", *_FAST_DEPLOY],
        "variants": list(VARIANTS),
    },
    # The paper's regime: fine-tuning a pre-trained backbone with SGD, new layers at 10x the lr.
    "transfer": {
        "description": f"a ResNet-18 pre-trained once on {PRETRAIN_CLASSES} synthetic classes (`lio study pretrain`), "
        "fine-tuned on 16 other classes with 16 images each (9 train, 3 val, 4 + 60 extra test per class: 1024 test "
        "images) at 112 px; SGD lr 0.001 (new layers 0.01), momentum 0.9, weight decay 1e-4, 14 epochs, batch 24",
        "set": [
            "data.synthetic.classes=16",
            "data.synthetic.images_per_class=16",
            "data.synthetic.test_fraction=0.25",
            "data.synthetic.extra_test_per_class=60",
            "data.val_fraction=0.25",
            f"data.synthetic.layout_seed={LAYOUT_SEED}",
            f"data.synthetic.skip_classes={PRETRAIN_CLASSES}",
            *_112PX,
            "model.arch=resnet18",
            "model.pretrained={pretrained}",
            "train.optimizer=sgd",
            "train.lr=0.001",
            "train.head_lr_mult=10",
            "train.weight_decay=0.0001",
            "train.epochs=14",
            *_FAST_DEPLOY,
        ],
        "variants": ["baseline", "lio", "lio-detached", "lio-batch"],
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
        "variants": list(VARIANTS),
    },
}
#: The pre-training run of the transfer preset: a plain ResNet-18 on classes the study never sees.
PRETRAIN_SET = [
    "seed=0",
    f"data.synthetic.classes={PRETRAIN_CLASSES}",
    "data.synthetic.images_per_class=30",
    f"data.synthetic.layout_seed={LAYOUT_SEED}",
    *_112PX,
    "model.arch=resnet18",
    "lio.stages=[]",
    "train.epochs=10",
]
NAME = re.compile(r"^study-(?P<preset>[a-z0-9]+)-(?P<variant>[a-z0-9.-]+)-s(?P<seed>\d+)$")


class StudyError(PipelineError):
    pass


def grid(
    preset: str, seeds: int, other_seeds: int, variants: list[str] | None = None, pretrained: Path = PRETRAINED
) -> list[tuple[str, list[str]]]:
    """(experiment name, `-S` overrides) for every run of the study (of `variants`, default the preset's)."""
    if preset not in PRESETS:
        raise StudyError(f"unknown study preset {preset!r}; use one of {', '.join(PRESETS)}")
    allowed = PRESETS[preset]["variants"]
    unknown = sorted(set(variants or []) - set(allowed))
    if unknown:
        raise StudyError(
            f"unknown variant(s) {', '.join(unknown)} for preset {preset}; use some of {', '.join(allowed)}"
        )
    settings = [o.format(pretrained=pretrained.resolve()) for o in PRESETS[preset]["set"]]
    runs = []  # seed-major, so that a study cut short still has paired runs of every variant
    for seed in range(max(seeds, other_seeds)):
        for variant in allowed:
            if variants and variant not in variants:
                continue
            if seed < (seeds if variant in MAIN_VARIANTS else other_seeds):
                runs.append((f"study-{preset}-{variant}-s{seed}", [f"seed={seed}", *settings, *VARIANTS[variant]]))
    return runs


def queue(
    preset: str,
    seeds: int,
    other_seeds: int,
    variants: list[str] | None = None,
    dvc: list[str] | None = None,
    pretrained: Path = PRETRAINED,
    recorded: Path | None = Path("reports/study.json"),
) -> list[str]:
    """Queues every run with `dvc exp run --queue`, except those already in `recorded` or still
    queued or running (a study cut short by the end of a session goes on where it stopped, and
    queueing twice adds nothing); returns the names."""
    if preset == "transfer" and not pretrained.exists():
        raise StudyError(
            f"the transfer preset fine-tunes {pretrained}, which is missing: run `lio study pretrain` first"
        )
    dvc = dvc or [sys.executable, "-m", "dvc"]
    done = pending(dvc)
    if recorded is not None:
        done |= {r["name"] for p in load_study(recorded)["presets"].values() for r in p.get("runs", [])}
    names = []
    for name, overrides in grid(preset, seeds, other_seeds, variants, pretrained):
        if name in done:
            continue
        _dvc(dvc, "exp", "run", "--queue", "--name", name, *(a for o in overrides for a in ("-S", o)))
        names.append(name)
    return names


def _dvc(dvc: list[str], *args: str) -> str:
    proc = subprocess.run([*dvc, *args], capture_output=True, text=True)
    if proc.returncode:
        raise StudyError(f"`dvc {' '.join(args)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def pending(dvc: list[str]) -> set[str]:
    """Names of the experiments `dvc queue status` lists as queued or running."""
    rows = (line.split() for line in _dvc(dvc, "queue", "status").splitlines())
    return {row[1] for row in rows if len(row) > 2 and row[-1] in ("Queued", "Running")}


def baselines(dvc: list[str], preset: str) -> list[str]:
    """The commits that experiments of `preset` ran from, as `dvc exp list -A` prints them
    (`<baseline>:` then a tab-indented `<sha> [<name>]` per experiment)."""
    revs: list[str] = []
    base = ""
    for line in _dvc(dvc, "exp", "list", "-A").splitlines():
        if line.strip() and not line[0].isspace():
            base = line.strip().rstrip(":")
        elif line.strip().endswith("]") and line.split("[")[-1].startswith(f"study-{preset}-") and base not in revs:
            revs.append(base)
    return revs


def pretrain(work: Path, out: Path, params: Path = Path("params.yaml")) -> dict:
    """The transfer preset's backbone: a plain ResNet-18 trained on PRETRAIN_CLASSES synthetic
    classes disjoint from the study's (same arrangement stream, earlier classes), saved as a
    state dict for `model.pretrained`. Runs prepare and train in `work`, once."""
    import yaml

    from pipeline.config import load_config
    from pipeline.data.prepare import prepare
    from pipeline.io import save_torch
    from pipeline.lio.checkpoint import load_trained
    from pipeline.train.loop import train

    data = yaml.safe_load(params.read_text())
    for override in PRETRAIN_SET:  # `-S key=value`, as DVC applies it
        key, value = override.split("=", 1)
        *parents, last = key.split(".")
        node = data
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = yaml.safe_load(value)
    work.mkdir(parents=True, exist_ok=True)
    write_text(work / "params.yaml", yaml.safe_dump(data, sort_keys=False))
    cfg = load_config(work / "params.yaml")
    prepare(cfg, work / "prepared")
    summary = train(cfg, work / "prepared", work / "model.pt", work / "checkpoints", work / "dvclive")
    model, _ = load_trained(work / "model.pt")
    save_torch(model.backbone.state_dict(), out)
    return summary


def experiments(shown) -> Iterator[tuple[str, dict]]:
    """(name, data) of every named experiment in `dvc exp show --json`, whatever the nesting.
    Failed runs are left out: their files are the queued snapshot's, another run's results."""
    if isinstance(shown, dict):
        data = shown.get("data")
        if isinstance(data, dict) and shown.get("name") and "params" in data and not shown.get("error"):
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
        if data.get("timestamp") is None:  # still running: its files are still the queued snapshot's (seen here)
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
            # a run stopped before its report holds the queued snapshot's reports/metrics.json, another
            # model's: the report's test top-1 equals the training stage's only if it scored this model
            "localisation": (
                _metric(data, "reports/metrics.json", "localisation") or {}
                if _metric(data, "reports/metrics.json", "test_top1") == top1
                else {}
            ),
        }
    return sorted(out.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def paired(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """Per-seed differences to the baseline, their mean, sample std, 95% t-interval and win count."""
    diffs = {seed: v - baseline[seed] for seed, v in sorted(values.items()) if seed in baseline}
    mean, std = _mean_std(list(diffs.values()))
    ci = None
    if std is not None:
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return {
        "per_seed": diffs,
        "mean": mean,
        "std": std,
        "ci95": ci,
        "wins": sum(d > 0 for d in diffs.values()),
        "n": len(diffs),
    }


def aggregate(runs: list[dict]) -> dict:
    """Per variant: top-1 mean/std over seeds, the paired difference to the baseline (same seed)
    on test and on validation with 95% t-intervals, localisation means per stage, training time."""
    base_test = {r["seed"]: r["test_top1"] for r in runs if r["variant"] == "baseline"}
    base_val = {r["seed"]: r["best_val_top1"] for r in runs if r["variant"] == "baseline"}
    variants = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        mean, std = _mean_std([r["test_top1"] for r in mine])
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
            "val_top1_mean": _mean_std([r["best_val_top1"] for r in mine if r["best_val_top1"] is not None])[0],
            "test_vs_baseline": paired({r["seed"]: r["test_top1"] for r in mine}, base_test),
            "val_vs_baseline": paired(
                {r["seed"]: r["best_val_top1"] for r in mine if r["best_val_top1"] is not None}, base_val
            ),
            "train_seconds_min": min((r["train_seconds"] for r in mine if r["train_seconds"]), default=None),
            **(
                {
                    "reference": REFERENCES[variant],
                    "test_vs_reference": paired(
                        {r["seed"]: r["test_top1"] for r in mine},
                        {r["seed"]: r["test_top1"] for r in runs if r["variant"] == REFERENCES[variant]},
                    ),
                }
                if variant in REFERENCES
                else {}
            ),
            "localisation": loc,
        }
    return variants


def choice(runs: list[dict]) -> dict | None:
    """The default by the study's rule: the candidate with the best mean validation top-1 over
    the seeds every candidate ran. Means over different seeds are not comparable (one variant's
    validation top-1 spans 0.63 to 0.97 across seeds of the cpu preset); test never chooses."""
    val = {
        v: {r["seed"]: r["best_val_top1"] for r in runs if r["variant"] == v and r["best_val_top1"] is not None}
        for v in CANDIDATES
    }
    val = {v: seeds for v, seeds in val.items() if seeds}
    shared = sorted(set.intersection(*(set(seeds) for seeds in val.values()))) if val else []
    if not shared:
        return None
    means = {v: sum(seeds[s] for s in shared) / len(shared) for v, seeds in val.items()}
    return {"seeds": shared, "val_top1_mean": means, "best": max(means, key=lambda v: means[v])}


def verdict(v: dict) -> str:
    """One sentence: does the 95% interval of the paired test difference exclude zero?"""
    d = v["test_vs_baseline"]
    if d["ci95"] is None:
        return "fewer than two paired seeds: no interval"
    lo, hi = d["ci95"]
    if lo > 0:
        return "the interval lies above zero: better than the baseline"
    if hi < 0:
        return "the interval lies below zero: worse than the baseline"
    return "the interval includes zero: no difference shown"


def _f(v, fmt=".3f", signed=False) -> str:
    if v is None:
        return "n/a"
    return format(v, ("+" if signed else "") + fmt)


def _ci(d: dict) -> str:
    return "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def markdown_section(preset: str, study: dict) -> list[str]:
    """One preset's tables: variants with paired intervals, localisation, and every run."""
    runs, variants = study["runs"], study["variants"]
    lines = [
        f"## {preset} preset",
        "",
        f"Setting: {study['setting']['description']}. Overrides of every run: "
        f"`{' '.join('-S ' + s for s in study['setting']['set'])}`.",
        "",
        f"Command: `{study['command']}`. Machine: {study['machine']}.",
        "",
        "Test top-1 of the best-validation epoch. Differences to the baseline are paired by seed (same data, same "
        "initialisation seed): mean, 95% t-interval over seeds, and the seeds where the variant beats the baseline. "
        "Val columns are the same on the validation split (what a choice may use). Train s: the fastest run's "
        "training stage.",
        "",
        "| variant | seeds | test top-1 | std | vs baseline, test | 95% CI | wins | verdict | val top-1 | "
        "vs baseline, val | 95% CI (val) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, v in variants.items():
        t, val = v["test_vs_baseline"], v["val_vs_baseline"]
        base = variant == "baseline"
        lines.append(
            f"| {variant} | {len(v['seeds'])} | {_f(v['test_top1_mean'])} | {_f(v['test_top1_std'])} | "
            + (
                "— | — | — | — | "
                if base
                else f"{_f(t['mean'], signed=True)} | {_ci(t)} | {t['wins']}/{t['n']} | {verdict(v)} | "
            )
            + f"{_f(v['val_top1_mean'])} | "
            + ("— | — | " if base else f"{_f(val['mean'], signed=True)} | {_ci(val)} | ")
            + f"{_f(v['train_seconds_min'], '.0f')} |"
        )
    for variant, v in variants.items():
        if "test_vs_reference" in v:
            d = v["test_vs_reference"]
            lines += [
                "",
                f"{variant} against {v['reference']} (one setting apart), paired by seed on test: "
                f"{_f(d['mean'], signed=True)}, 95% CI {_ci(d)}, {d['wins']}/{d['n']} wins.",
            ]
    if study.get("choice"):
        c = study["choice"]
        ranked = sorted(c["val_top1_mean"].items(), key=lambda kv: -kv[1])
        lines += [
            "",
            f"Choice of the default (validation only, on the seeds every candidate ran: "
            f"{', '.join(map(str, c['seeds']))}): mean validation top-1 "
            + ", ".join(f"{v} {m:.3f}" for v, m in ranked)
            + f"; the best is **{c['best']}**.",
        ]
    loc_keys = SCORES
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
    return lines


def markdown(study: dict) -> str:
    lines = [
        "# LIO study",
        "",
        "Written by `lio study collect`; each preset's section is updated as its runs finish.",
        "",
    ]
    for preset, section in study["presets"].items():
        lines += [*markdown_section(preset, section), ""]
    return "\n".join(lines)


def load_study(path: Path) -> dict:
    """The recorded study, or an empty one; a file from before presets were sections is read as the cpu preset's."""
    if not path.exists():
        return {"presets": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StudyError(f"{path}: not valid JSON ({e}); restore it with `git checkout {path}`") from e
    return data if "presets" in data else {"presets": {data["preset"]: data}}


def collect(preset: str, out_dir: Path, command: str, machine: str, dvc: list[str] | None = None) -> dict:
    """Adds the finished runs of `preset` that `dvc exp show --json` finds to OUT/study.json (runs
    already recorded there stay: experiments live only on the machine that ran them) and rewrites
    OUT/study.md. Only the commits the study ran from are shown: `-A` walks every commit of the
    repository, minutes per call once the study has committed its results a few dozen times."""
    dvc = dvc or [sys.executable, "-m", "dvc"]
    revs = baselines(dvc, preset)
    shown = json.loads(_dvc(dvc, "exp", "show", "--json", *(a for r in revs for a in ("--rev", r)))) if revs else []
    study = load_study(out_dir / "study.json")
    old = study["presets"].get(preset, {})
    found = records(shown, preset)
    merged = {r["name"]: r for r in old.get("runs", [])} | {r["name"]: r for r in found}
    runs = sorted(merged.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    study["presets"][preset] = {
        "preset": preset,
        "setting": {k: PRESETS[preset][k] for k in ("description", "set")},
        "command": command,
        "machine": machine if found else old.get("machine", machine),  # nothing new: the same bytes
        "variants": aggregate(runs),
        "choice": choice(runs),
        "runs": runs,
    }
    write_json(out_dir / "study.json", study)
    write_text(out_dir / "study.md", markdown(study))
    return study["presets"][preset]
