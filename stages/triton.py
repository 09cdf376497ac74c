"""`lio triton`: models/onnx/ + models/engine/ -> models/triton/ (a Triton model repository)."""

import click

from pipeline.core import paths
from pipeline.deploy.triton import build_repository
from stages.command import with_params


@click.command("triton")
@with_params()
def command(cfg):
    """Write a model repository that `tritonserver --model-repository=models/triton` serves."""
    client = build_repository(
        paths.TRITON, paths.ONNX["fp32"], paths.ENGINE_INFO, paths.ENGINE, paths.FUSED, paths.ONNX["int8_cpu"]
    )
    click.echo(f"wrote {paths.TRITON}: {', '.join(client['models'])}")
