"""`lio triton`: models/onnx/, models/engine/ and reports/runtime.json -> models/triton/ (for NGC's Triton
container) and models/triton_cpu/ (for `lio serve`, the bundled server)."""

import click

from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.runtime import RuntimeChoice
from pipeline.core import paths
from pipeline.deploy.onnx_runtime import read_meta
from pipeline.serve.repository import write_cpu_repository
from pipeline.serve.triton import build_repository
from stages.command import with_params


@click.command("triton")
@with_params()
def command(cfg):
    """Write the model repositories: models/triton for NGC's container, models/triton_cpu for `lio serve`."""
    runtime = RuntimeChoice.load(paths.RUNTIME)
    guide = build_repository(
        paths.TRITON, paths.ONNX["fp32"], paths.ENGINE_INFO, paths.ENGINE, paths.FUSED, paths.ONNX["int8_cpu"], runtime
    )
    click.echo(f"wrote {paths.TRITON}: {', '.join(guide.models)}")
    meta = read_meta(paths.ONNX["fp32"])
    shipped = runtime.shipped
    served = write_cpu_repository(
        paths.TRITON_CPU,
        paths.ONNX[shipped.precision],
        shipped.name,
        meta.preprocess,
        meta.classes,
        EngineInfo.load(paths.ENGINE_INFO).profile.max,
    )
    click.echo(f"wrote {paths.TRITON_CPU}: {', '.join(served.models)} ({served.candidate})")
