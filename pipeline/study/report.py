"""reports/study.json and reports/study.md: every recorded run of every preset, aggregated."""

from __future__ import annotations

from pathlib import Path

from pipeline.artifacts.extent import MAPS
from pipeline.artifacts.study import ArmSummary, Paired, PresetStudy, Setting, Study
from pipeline.core.io import write_text
from pipeline.core.markdown import cell, table
from pipeline.study.aggregate import aggregate, choice, seeds_for, verdict
from pipeline.study.presets import ARMS, PRESETS
from pipeline.study.runs import records, show

#: the resolution the study aims at: a paired 95% interval at most this wide on each side (issue 42)
RESOLUTION = 0.01


def _ci(d: Paired | None) -> str:
    return "n/a" if d is None or d.ci95 is None else f"[{d.ci95[0]:+.3f}, {d.ci95[1]:+.3f}]"


def _arm_row(name: str, v: ArmSummary) -> dict:
    t, val, base = v.test_vs_baseline, v.val_vs_baseline, name == "baseline"
    needed = seeds_for(RESOLUTION, t.std) if t.std else None
    return {
        "arm": name,
        "seeds": len(v.seeds),
        "test": v.test_top1_mean,
        "std": v.test_top1_std,
        "diff": "—" if base else cell(t.mean, "+.3f"),
        "ci": "—" if base else _ci(t),
        "half": "—" if base else cell(t.half_width, ".3f"),
        "needed": "—" if base else needed,
        "wins": "—" if base else f"{t.wins}/{t.n}",
        "verdict": "—" if base else verdict(v),
        "val": v.val_top1_mean,
        "val_diff": "—" if base else cell(val.mean, "+.3f"),
        "val_ci": "—" if base else _ci(val),
        "seconds": v.train_seconds_min,
    }


ARM_COLUMNS = [
    ("arm", "arm", ""),
    ("seeds", "seeds", ""),
    ("test", "test top-1", ".3f"),
    ("std", "std", ".3f"),
    ("diff", "vs baseline, test", ""),
    ("ci", "95% CI", ""),
    ("half", "± (half-width)", ""),
    ("needed", f"seeds for ±{RESOLUTION}", ""),
    ("wins", "wins", ""),
    ("verdict", "verdict", ""),
    ("val", "val top-1", ".3f"),
    ("val_diff", "vs baseline, val", ""),
    ("val_ci", "95% CI (val)", ""),
    ("seconds", "train s", ".0f"),
]


def markdown_section(preset: str, study: PresetStudy) -> list[str]:
    """One preset's tables: arms with paired intervals, convergence, localisation, and every run."""
    arms = study.arms
    lines = [
        f"## {preset} preset",
        "",
        f"Setting: {study.setting.description}. Overrides of every run: "
        f"`{' '.join('-S ' + s for s in study.setting.set)}`.",
        "",
        f"Command: `{study.command}`. Machine: {study.machine} (each run's own in the last table).",
        "",
        "Test top-1 of the best-validation epoch. Differences to the baseline are paired by seed (same data, same "
        "initialisation seed): mean, 95% t-interval over seeds, its half-width and the paired seeds that would make "
        f"it ±{RESOLUTION} at this spread, and the seeds where the arm beats the baseline. Val columns are the "
        "same on the validation split (what a choice may use). Train s: the fastest run's training stage.",
        "",
        table([_arm_row(name, v) for name, v in arms.items()], ARM_COLUMNS),
    ]
    for arm, v in arms.items():
        if v.test_vs_reference is not None:
            d = v.test_vs_reference
            lines += [
                "",
                f"{arm} against {v.reference} (one setting apart), paired by seed on test: "
                f"{cell(d.mean, '+.3f')}, 95% CI {_ci(d)}, {d.wins}/{d.n} wins.",
            ]
    lines += _convergence_lines(arms)
    if study.choice is not None:
        c = study.choice
        ranked = sorted(c.val_top1_mean.items(), key=lambda kv: -kv[1])
        lines += [
            "",
            f"Choice of the default (validation only, on the seeds every candidate ran: "
            f"{', '.join(map(str, c.seeds))}): mean validation top-1 "
            + ", ".join(f"{v} {m:.3f}" for v, m in ranked)
            + f"; the best is **{c.best}**.",
        ]
    return lines + _localisation_lines(arms) + _runs_lines(study)


def _convergence_lines(arms: dict[str, ArmSummary]) -> list[str]:
    lines: list[str] = []
    converged = {name: v.convergence for name, v in arms.items() if v.convergence is not None}
    if converged:
        lines += [
            "",
            "Convergence: runs whose best validation epoch falls before the last fifth of the schedule, the "
            "training top-1 of the last epoch, and what the last fifth added to validation top-1 over the best "
            "epoch before it (runs whose per-epoch curve was recorded; one validation image is "
            "1/(validation images) of top-1):",
            "",
            table(
                [
                    {
                        "arm": name,
                        "early": f"{c.best_before_last_fifth}/{c.runs}",
                        "mean": c.train_top1_last_mean,
                        "min": c.train_top1_last_min,
                        "curves": c.curves,
                        "gain": c.last_fifth_gain_mean,
                        "gain_max": c.last_fifth_gain_max,
                    }
                    for name, c in converged.items()
                ],
                [
                    ("arm", "arm", ""),
                    ("early", "best epoch before the last fifth", ""),
                    ("mean", "last-epoch train top-1, mean", ".3f"),
                    ("min", "min", ".3f"),
                    ("curves", "runs with a curve", ""),
                    ("gain", "val gained in the last fifth, mean", "+.3f"),
                    ("gain_max", "max", "+.3f"),
                ],
            ),
        ]
    return lines


def _localisation_lines(arms: dict[str, ArmSummary]) -> list[str]:
    loc_rows = [
        {"arm": name, "stage": stage, "cells": d.cells, **d.iou} | {"pointing": d.pointing, "chance": d.pointing_chance}
        for name, v in arms.items()
        for stage, d in v.localisation.items()
    ]
    if not loc_rows:
        return []
    columns = [("arm", "arm", ""), ("stage", "stage", ""), ("cells", "N", "")]
    columns += [(m, f"IoU {m}", ".3f") for m in MAPS] + [("pointing", "pointing", ".3f")]
    return [
        "",
        "Localisation on the test images (mean over seeds; IoU after min-max normalisation and "
        "threshold 0.5; see reports/report.md of any run for the definitions):",
        "",
        table(loc_rows, [*columns, ("chance", "pointing chance", ".3f")]),
    ]


def _runs_lines(study: PresetStudy) -> list[str]:
    lines: list[str] = []
    lines += [
        "",
        "Runs:",
        "",
        table(
            [vars(r) for r in study.runs],
            [
                ("name", "run", ""),
                ("test_top1", "test top-1", ".3f"),
                ("best_val_top1", "best val top-1", ".3f"),
                ("best_epoch", "best epoch", ""),
                ("epochs", "epochs", ""),
                ("train_top1_last", "last-epoch train top-1", ".3f"),
                ("train_seconds", "train s", ".0f"),
                ("machine", "CPU", ""),
            ],
        ),
    ]
    return lines


def markdown(study: Study) -> str:
    lines = [
        "# LIO study",
        "",
        "Written by `lio study collect`; each preset's section is updated as its runs finish.",
        "",
    ]
    for preset, section in study.presets.items():
        lines += [*markdown_section(preset, section), ""]
    return "\n".join(lines)


def collect(preset: str, out_dir: Path, command: str, machine: str, shown: list | None = None) -> PresetStudy:
    """Adds the finished runs of `preset` found in `shown` (`dvc exp show --json` of the commits the
    study ran from, read here when not given) to OUT/study.json (runs already recorded there stay:
    experiments live only on the machine that ran them, which each new run records) and rewrites
    OUT/study.md."""
    shown = show(preset) if shown is None else shown
    study = Study.read(out_dir / "study.json")
    old = study.presets.get(preset)
    found = records(shown, preset, machine)
    merged = {r.name: r for r in (old.runs if old else [])} | {r.name: r for r in found}
    runs = sorted(merged.values(), key=lambda r: (list(ARMS).index(r.arm), r.seed))
    study.presets[preset] = PresetStudy(
        preset=preset,
        setting=Setting(PRESETS[preset].description, PRESETS[preset].settings()),
        command=command,
        machine=machine if found or old is None else old.machine,  # nothing new: the same bytes
        arms=aggregate(runs),
        choice=choice(runs),
        runs=runs,
    )
    study.save(out_dir / "study.json")
    write_text(out_dir / "study.md", markdown(study))
    return study.presets[preset]
