"""`lio prepare`: params `seed`, `data` -> data/prepared/ (manifest.csv, classes.json)."""

import click

from pipeline.config.data import PrepareParams
from pipeline.core.paths import PREPARED
from pipeline.data.prepare import prepare
from stages.command import with_params


@click.command("prepare")
@with_params(PrepareParams)
def command(cfg):
    """Generate or read the dataset, check its images, carve the validation split."""
    click.echo(f"wrote {PREPARED}: {prepare(cfg, PREPARED)}")
