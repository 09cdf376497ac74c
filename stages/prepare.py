"""`lio prepare`: params `seed`, `data` -> data/prepared/ (manifest.csv, classes.json)."""

import click

from pipeline.command import with_config
from pipeline.data.prepare import prepare
from pipeline.paths import PREPARED


@click.command("prepare")
@with_config
def command(cfg):
    """Generate or read the dataset, check its images, carve the validation split."""
    click.echo(f"wrote {PREPARED}: {prepare(cfg, PREPARED)}")
