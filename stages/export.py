"""`lio export`: params `export`, `seed`, `model.arch`; models/<arch>.pt -> models/onnx/, reports/export.json."""

import click

from pipeline.command import with_config
from pipeline.export import export_all


@click.command("export")
@with_config
def command(cfg):
    """Export the plain model to ONNX and make the FP16/INT8 variants; check each in ONNX Runtime."""
    e = cfg.export
    for precision, r in export_all(cfg.model.arch, e.precisions, e.opset, e.calib_images, cfg.seed).items():
        click.echo(f"{precision}: {r['file']} test top1 {r['test_top1']:.3f}")
