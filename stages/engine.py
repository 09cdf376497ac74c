"""`lio engine`: params `engine`; models/onnx/ -> models/engine/ (model.engine where TensorRT
and a GPU exist, engine.json always, saying why not where it did not build)."""

import click

from pipeline import paths
from pipeline.command import with_config
from pipeline.deploy.engine import build_engine


@click.command("engine")
@with_config
def command(cfg):
    """Build a strongly typed TensorRT engine from the chosen ONNX variant."""
    info = build_engine(
        cfg.engine, paths.ONNX, paths.EXPORT_REPORT, paths.ENGINE, paths.ENGINE_INFO, paths.TIMING_CACHE
    )
    if info["fallback"]:
        click.echo(f"engine.precision: {info['fallback']}")
    if info["built"]:
        click.echo(f"wrote {paths.ENGINE} ({info['precision']}, TensorRT {info['tensorrt']}, {info['gpu']['name']})")
    else:
        click.echo(f"engine not built: {info['reason']} (wrote {paths.ENGINE_INFO})")
