"""`lio strip`: param `model.arch`; models/lio.pt -> models/<arch>.pt + .json, reports/parity.json."""

import click

from pipeline.config.model import ArchParams
from pipeline.core import paths
from pipeline.strip import strip
from stages.command import with_params


@click.command("strip")
@with_params(ArchParams)
def command(cfg):
    """Strip the heads and prove the result is a plain torchvision model."""
    out = paths.stripped(cfg.model.arch)
    proof = strip(paths.TRAINED, paths.PREPARED, out, paths.PARITY)
    click.echo(f"parity passed ({', '.join(c.name for c in proof.checks)}); wrote {out} and {paths.metadata(out)}")
