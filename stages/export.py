"""`lio export`: params `export`, `seed`, `model.arch`; models/<arch>.pt -> models/onnx/, reports/export.json."""

import click

from pipeline.config.export import ExportParams
from pipeline.core import paths
from pipeline.deploy.export import export_all
from stages.command import with_params


@click.command("export")
@with_params(ExportParams)
def command(cfg):
    """Export the plain model to ONNX, make the reduced-precision variants and gate each on validation."""
    result = export_all(
        paths.require(paths.deployable(cfg.model.arch), "strip"),
        paths.require(paths.PREPARED, "prepare"),
        paths.ONNX,
        paths.EXPORT_REPORT,
        cfg.export,
        cfg.seed,
        paths.FUSED,
    )
    for precision, v in result.variants.items():
        line = f"{precision}: {v.file} test top1 {v.test_top1:.3f}"
        if v.gate is not None:
            g = v.gate
            lo, hi = g.agreement_ci95
            line += (
                f", gate {v.status} on {g.images} images: top1 drop {g.top1_drop:+.4f}, "
                f"agreement {g.agreement:.4f} [{lo:.3f}, {hi:.3f}]"
            )
        click.echo(line)
