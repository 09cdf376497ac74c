"""`lio prepare`: params `data`, `seed` -> data/prepared/{manifest.csv, classes.json}."""
from pathlib import Path

import click

from pipeline.data.prepare import prepare
from stages.common import with_config

OUT = Path("data/prepared")


@click.command("prepare")
@with_config
def command(cfg):
    """Generate or read the dataset, check its images, carve the validation split."""
    summary = prepare(cfg, OUT)
    click.echo(f"wrote {OUT}: {summary}")
