"""`lio runtime`: params `seed`, `export` (the gates and their images), `engine.max_batch`, `report` (timing);
models/onnx/ and reports/export.json -> reports/runtime.json, the CPU runtime chosen on this machine."""

import click

from pipeline.artifacts.export import ExportReport
from pipeline.config.report import RuntimeParams
from pipeline.core import paths
from pipeline.serve.choose import choose
from stages.command import with_params


@click.command("runtime")
@with_params(RuntimeParams)
def command(cfg):
    """Gate and time every CPU candidate (ONNX Runtime, OpenVINO) here; the fastest that passed ships."""
    r = cfg.report
    result = choose(
        paths.ONNX,
        ExportReport.load(paths.EXPORT_REPORT),
        paths.require(paths.PREPARED, "prepare"),
        cfg.export.gates,
        cfg.export.calib_images,
        cfg.seed,
        cfg.engine.max_batch,
        (r.warmup, r.iters, r.throughput_iters),
    )
    result.save(paths.RUNTIME)
    click.echo(f"{result.cpu} ({', '.join(result.flags)}), {result.threads} threads, {result.streams} stream(s)")
    for c in result.candidates:
        speed = f"p50 {c.p50_ms:.2f} ms, {c.throughput:.0f} img/s at batch {result.batch}" if c.throughput else ""
        click.echo(f"  {c.name}: {c.status} {speed}{'; ' + c.reason if c.reason else ''}")
    click.echo(f"chosen: {result.chosen} ({result.why})")
