"""`lio study queue|pretrain|collect`: the seeded ablation study as DVC experiments (not a stage)."""

import time
from pathlib import Path

import click

from pipeline.core.machine import cpu
from pipeline.study.presets import PRESETS, PRETRAINED
from pipeline.study.report import collect
from pipeline.study.runs import pretrain, queue
from stages.command import one_line_errors

PRESET = click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="structure",
    show_default=True,
    help="structure: where the paper says LIO matters (sibling classes, distractors, pose), runs that converge "
    "on 2 CPU cores; cpu: 112 px ResNet-18 from scratch; transfer: fine-tuning a backbone from `lio study "
    "pretrain`; gpu: the paper's 448 px, pool 2, ResNet-50.",
)


@click.group("study")
def command():
    """The paper's arms x seeds, as `dvc exp run --queue` experiments, paired by seed."""


@command.command("queue")
@PRESET
@click.option("--seeds", type=int, help="Seeds for the baseline and LIO [the preset's: structure 18, others 8].")
@click.option("--other-seeds", type=int, help="Seeds for the other arms [the preset's: structure 18, others 3].")
@click.option("--arms", default="", help="Comma-separated subset of the arms (default: all).")
def queue_command(preset, seeds, other_seeds, arms):
    """Queue every run not yet recorded; start them with `dvc queue start --jobs 1`."""
    with one_line_errors():
        seeds = PRESETS[preset].seeds if seeds is None else seeds
        other_seeds = PRESETS[preset].other_seeds if other_seeds is None else other_seeds
        names = queue(preset, seeds, other_seeds, [v for v in arms.split(",") if v] or None)
    click.echo(f"queued {len(names)} experiments: {', '.join(names)}\nrun them: dvc queue start --jobs 1")


@command.command("pretrain")
@click.option("--work", default="models/pretrained/work", show_default=True, type=click.Path(file_okay=False))
def pretrain_command(work):
    """Pre-train the transfer preset's backbone once (ResNet-18 on classes the study never sees)."""
    with one_line_errors():
        click.echo(f"wrote {PRETRAINED}: {pretrain(Path(work), PRETRAINED)}")


@command.command("collect")
@PRESET
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--watch", default=0, show_default=True, help="Re-collect every N seconds (0: once).")
@click.option("--machine", default=f"{cpu()[0]}, {' '.join(cpu()[1])}", help="The CPU the new runs ran on [this one].")
def collect_command(preset, out, watch, machine):
    """Add the finished runs DVC holds to OUT/study.json (recorded runs stay) and rewrite OUT/study.md."""
    while True:
        with one_line_errors():
            result = collect(preset, Path(out), PRESETS[preset].command(preset), machine)
        click.echo(
            f"{len(result.runs)} finished runs -> {out}/study.md (the model card quotes it after `dvc repro report`)"
        )
        if not watch:
            return
        time.sleep(watch)
