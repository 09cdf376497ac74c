"""`lio report`: params `report`, `seed`, `model.arch`, `engine.max_batch` -> reports/
(metrics.json, report.md, latency.json, localisation.json, per_class.json, confusion.json, masks.png)."""

import click

from pipeline.report import write_report
from stages.common import with_config


@click.command("report")
@with_config
def command(cfg):
    """Accuracy, agreement, latency and size of every backend; per-class results; localisation."""
    click.echo("\n".join(write_report(cfg)))
