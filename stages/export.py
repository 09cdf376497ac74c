"""`lio export`: params `export`, `seed`, `model.arch`; models/<arch>.pt -> models/onnx/, reports/export.json."""

import click

from pipeline import paths
from pipeline.command import with_config
from pipeline.deploy.export import export_all


@click.command("export")
@with_config
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
    for precision in cfg.export.precisions:
        r, gate = result[precision], result[precision].get("gate")
        line = f"{precision}: {r['file']} test top1 {r['test_top1']:.3f}"
        if gate is not None:
            drop, agree = gate["val_top1_drop"], gate["val_agreement"]
            line += f", gate {r['status']}: val top1 drop {drop:+.4f}, agreement {agree:.4f}"
        click.echo(line)
