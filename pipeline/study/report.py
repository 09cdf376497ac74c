"""reports/study.json and reports/study.md: every recorded run of every preset, aggregated."""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts.extent import SCORES
from pipeline.core.io import write_json, write_text
from pipeline.study.aggregate import aggregate, choice, verdict
from pipeline.study.presets import PRESETS, VARIANTS
from pipeline.study.runs import load_study, records, show


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


def collect(preset: str, out_dir: Path, command: str, machine: str, shown: list | None = None) -> dict:
    """Adds the finished runs of `preset` found in `shown` (`dvc exp show --json` of the commits the
    study ran from, read here when not given) to OUT/study.json (runs already recorded there stay:
    experiments live only on the machine that ran them) and rewrites OUT/study.md."""
    shown = show(preset) if shown is None else shown
    study = load_study(out_dir / "study.json")
    old = study["presets"].get(preset, {})
    found = [{**r, "machine": machine} for r in records(shown, preset)]  # runs live only where they ran
    merged = {r["name"]: r for r in old.get("runs", [])} | {r["name"]: r for r in found}
    runs = sorted(merged.values(), key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    study["presets"][preset] = {
        "preset": preset,
        "setting": {"description": PRESETS[preset].description, "set": PRESETS[preset].settings()},
        "command": command,
        "machine": machine if found else old.get("machine", machine),  # nothing new: the same bytes
        "variants": aggregate(runs),
        "choice": choice(runs),
        "runs": runs,
    }
    write_json(out_dir / "study.json", study)
    write_text(out_dir / "study.md", markdown(study))
    return study["presets"][preset]
