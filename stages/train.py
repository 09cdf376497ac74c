"""`lio train`: params `seed`, `data`, `model`, `lio`, `train` -> models/lio.pt, checkpoints/, dvclive/."""

import click

from pipeline import paths
from pipeline.command import with_config
from pipeline.train.loop import train


@click.command("train")
@with_config
def command(cfg):
    """Train LIO (or the baseline with lio.stages: []); torchrun for several GPUs."""
    summary = train(cfg, paths.PREPARED, paths.TRAINED, paths.CHECKPOINTS, paths.LIVE)
    if summary:
        click.echo(f"wrote {paths.TRAINED}: {summary}")
