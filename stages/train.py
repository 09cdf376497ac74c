"""`lio train`: params `model`, `lio`, `train` -> models/lio.pt, checkpoints/, dvclive/."""
from pathlib import Path

import click

from pipeline.train import train
from stages.common import with_config
from stages.prepare import OUT as PREPARED

OUT = Path("models/lio.pt")
CHECKPOINTS = Path("checkpoints")
LIVE = Path("dvclive")


@click.command("train")
@with_config
def command(cfg):
    """Train LIO (or the baseline with lio.stages: []); torchrun for several GPUs."""
    summary = train(cfg, PREPARED, OUT, CHECKPOINTS, LIVE)
    if summary:
        click.echo(f"wrote {OUT}: {summary}")
