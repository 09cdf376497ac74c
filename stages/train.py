"""`lio train`: params `seed`, `data`, `model`, `lio`, `train` -> models/lio.pt, checkpoints/, dvclive/."""

import click

from pipeline.config.train import TrainParams
from pipeline.core import paths
from pipeline.train.loop import train
from stages.command import with_params


@click.command("train")
@with_params(TrainParams)
def command(cfg):
    """Train LIO (or the baseline with lio.stages: []); torchrun for several GPUs."""
    summary = train(cfg, paths.PREPARED, paths.TRAINED, paths.CHECKPOINTS, paths.LIVE)
    if summary:
        click.echo(f"wrote {paths.TRAINED}: {summary}")
