"""`lio triton`: models/onnx/ + models/engine/ -> models/triton/ (a Triton model repository)."""

import click

from pipeline import paths
from pipeline.command import with_config
from pipeline.deploy.triton import build_repository


@click.command("triton")
@with_config
def command(cfg):
    """Write a model repository that `tritonserver --model-repository=models/triton` serves."""
    client = build_repository(paths.TRITON, paths.ONNX["fp32"], paths.ENGINE_INFO, paths.ENGINE, paths.FUSED)
    click.echo(f"wrote {paths.TRITON}: {', '.join(client['models'])}")
