"""`lio engine`: params `engine`; models/onnx/ -> models/engine/ (model.engine where TensorRT
and a GPU exist, engine.json always, saying why not where it did not build)."""

import click

from pipeline.config.engine import EngineParams
from pipeline.core import paths
from pipeline.deploy.engine import build_engine
from stages.command import with_params


@click.command("engine")
@with_params(EngineParams)
def command(cfg):
    """Build a strongly typed TensorRT engine from the chosen ONNX variant."""
    info = build_engine(
        cfg.engine, paths.ONNX, paths.EXPORT_REPORT, paths.ENGINE, paths.ENGINE_INFO, paths.TIMING_CACHE
    )
    if info.fallback:
        click.echo(f"engine.precision: {info.fallback}")
    if info.built and info.gpu is not None:
        click.echo(f"wrote {paths.ENGINE} ({info.precision}, TensorRT {info.tensorrt}, {info.gpu.name})")
    else:
        click.echo(f"engine not built: {info.reason} (wrote {paths.ENGINE_INFO})")
