"""`lio localise`: params `seed`, `report` (mask_images, mask_threshold); models/lio.pt ->
reports/extent.json, localisation.json, masks.png."""

import click

from pipeline.config.report import LocaliseParams
from pipeline.core import paths
from pipeline.evaluate.extent import ExtentFiles, localise
from stages.command import with_params


@click.command("localise")
@with_params(LocaliseParams)
def command(cfg):
    """The trained heads' maps against the true masks, beside reference maps; the masks figure."""
    files = ExtentFiles(paths.PREPARED, paths.TRAINED, paths.EXTENT, paths.LOCALISATION, paths.MASKS)
    result = localise(files, cfg.report.mask_images, cfg.report.mask_threshold, cfg.seed)
    click.echo(f"wrote {paths.EXTENT} ({len(result.stages)} LIO stage(s) scored) and {paths.MASKS}")
