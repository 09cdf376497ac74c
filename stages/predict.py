"""`lio predict MODEL IMAGE...`: the deployer's smoke test (not a DVC stage)."""

import json
import sys
from pathlib import Path

import click

from pipeline.core.errors import PipelineError
from pipeline.deploy.predict import predict
from pipeline.deploy.preprocess import MAX_PIXELS


@click.command("predict")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-k", "--top-k", default=5, show_default=True, help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option(
    "--max-pixels",
    default=MAX_PIXELS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Refuse, before decoding, an image whose header claims more pixels (PIL's default limit).",
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "onnxruntime", "openvino"]),
    default="auto",
    show_default=True,
    help="For an .onnx MODEL: auto follows reports/runtime.json where it chose this file on this CPU, "
    "else ONNX Runtime.",
)
def command(model, images, top_k, as_json, strict, max_pixels, runtime):
    """Top-k classes of IMAGES (files or folders) from a .pt, .onnx or .engine MODEL.

    An unreadable image is skipped with a warning and listed at the end (exit status 2),
    unless --strict.
    """
    try:
        runner = onnx_runner(Path(model), runtime) if model.endswith(".onnx") else None
        results = predict(model, list(images), top_k, strict, max_pixels, runner)
    except PipelineError as e:
        raise click.ClickException(str(e)) from e
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            if "error" in r:
                click.secho(f"warning: skipped {r['error']}", fg="yellow", err=True)
                continue
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability']:.3f}  {t['class']}")
    if failed:
        click.secho(f"{len(failed)} of {len(results)} image(s) could not be read", fg="yellow", err=True)
        sys.exit(2)


def onnx_runner(model: Path, runtime: str):
    """The runtime for an ONNX file: as asked, or (auto) the one reports/runtime.json chose for this very
    file on this CPU; None: ONNX Runtime, by the file's suffix."""
    from pipeline.artifacts.runtime import RuntimeChoice
    from pipeline.core import paths
    from pipeline.core.machine import cpu
    from pipeline.serve.candidates import candidate

    if runtime == "openvino":
        return candidate("openvino-int8").open(model).run  # OpenVINO's default precision for this CPU
    if runtime == "onnxruntime" or not paths.RUNTIME.exists():
        return None
    choice = RuntimeChoice.load(paths.RUNTIME)
    shipped = choice.shipped
    if Path(shipped.graph).resolve() != model.resolve() or not choice.made_on(*cpu()):
        return None
    return candidate(shipped.name).open(model).run
