"""`lio study queue|collect`: the seeded ablation study as DVC experiments (not a stage)."""

import sys
import time
from pathlib import Path

import click

from pipeline.core.errors import PipelineError
from pipeline.core.machine import cpu
from pipeline.study.presets import PRESETS, PRETRAINED
from pipeline.study.report import collect
from pipeline.study.runs import pretrain, queue

PRESET = click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default="structure",
    show_default=True,
    help="structure: where the paper says LIO matters (sibling classes, distractors, pose), runs that converge "
    "on 2 CPU cores; cpu: 112 px ResNet-18 from scratch (each map >= 4x4); transfer: fine-tuning a backbone from "
    "`lio study pretrain`; gpu: the paper's 448 px, pool 2, ResNet-50.",
)


@click.group("study")
def command():
    """The paper's variants x seeds, as `dvc exp run --queue` experiments, paired by seed."""


@command.command("queue")
@PRESET
@click.option("--seeds", default=8, show_default=True, help="Seeds for the baseline and LIO.")
@click.option("--other-seeds", default=3, show_default=True, help="Seeds for the other variants.")
@click.option("--variants", default="", help="Comma-separated subset of the variants (default: all).")
def queue_command(preset, seeds, other_seeds, variants):
    """Queue every run; start them with `dvc queue start --jobs 1`."""
    try:
        names = queue(preset, seeds, other_seeds, [v for v in variants.split(",") if v] or None)
    except PipelineError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"queued {len(names)} experiments: {', '.join(names)}\nrun them: dvc queue start --jobs 1")


@command.command("pretrain")
@click.option("--work", default="models/pretrained/work", show_default=True, type=click.Path(file_okay=False))
def pretrain_command(work):
    """Pre-train the transfer preset's backbone once (ResNet-18 on classes the study never sees)."""
    try:
        summary = pretrain(Path(work), PRETRAINED)
    except PipelineError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"wrote {PRETRAINED}: {summary}")


@command.command("collect")
@PRESET
@click.option("--out", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--watch", default=0, show_default=True, help="Re-collect every N seconds while runs are queued.")
@click.option(
    "--machine",
    default=", ".join(filter(None, [cpu()[0], " ".join(cpu()[1])])),
    show_default=False,
    help="The CPU the new runs ran on, recorded with each (default: this machine's).",
)
def collect_command(preset, out, watch, machine):
    """Add the finished runs DVC holds (`dvc exp show`) to OUT/study.json (recorded runs stay) and OUT/study.md."""
    command_line = (
        "lio study pretrain && " if preset == "transfer" else ""
    ) + f"lio study queue --preset {preset} && dvc queue start --jobs 1 && lio study collect --preset {preset}"
    while True:
        try:
            result = collect(preset, Path(out), command_line, machine)
        except PipelineError as e:
            raise click.ClickException(str(e)) from e
        click.echo(
            f"{len(result.runs)} finished runs -> {out}/study.md; the model card quotes it after "
            "`dvc repro report` (which only re-renders: nothing is re-timed)"
        )
        if not watch:
            return
        sys.stdout.flush()
        time.sleep(watch)
