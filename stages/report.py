"""`lio report`: params `report`, `seed`, `model.arch`, `engine.max_batch` -> reports/
(metrics.json, report.md, latency.json, localisation.json, per_class.json, confusion.json, masks.png)."""

import click

from pipeline.command import with_config
from pipeline.report import write_report


@click.command("report")
@with_config
def command(cfg):
    """Accuracy, agreement, latency and size of every backend; per-class results; localisation."""
    click.echo("\n".join(write_report(cfg)))
