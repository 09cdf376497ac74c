"""`lio export`: params `export`, `seed`, `model.arch`, `engine.max_batch` (the batch CPU speed is timed at);
models/<arch>.pt -> models/onnx/, reports/export.json."""

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
        paths.require(paths.stripped(cfg.model.arch), "strip"),
        paths.require(paths.PREPARED, "prepare"),
        paths.ONNX,
        paths.EXPORT_REPORT,
        cfg.export,
        cfg.seed,
        cfg.engine.max_batch,
        paths.FUSED,
    )
    for precision, v in result.variants.items():
        line = f"{precision}: {v.file} test top1 {v.test_top1:.3f}"
        if v.gate is not None:
            g = v.gate
            lo, hi = g.agreement_ci95
            kept = v.kept_in_fp32
            line += (
                f", gate {v.status} on {g.images} images: top1 {g.top1:.4f} = {g.top1_ratio:.4f} x FP32's "
                f"(min {g.min_top1_ratio}), agreement {g.agreement:.4f} [{lo:.3f}, {hi:.3f}] (floor {g.min_agreement})"
                + (f"; {len(kept)} layers kept in FP32" if kept else "")
            )
        click.echo(line)
