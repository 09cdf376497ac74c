"""`lio predict MODEL IMAGE...`: the deployer's smoke test (not a DVC stage)."""

import json
import sys

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
def command(model, images, top_k, as_json, strict, max_pixels):
    """Top-k classes of IMAGES (files or folders) from a .pt, .onnx or .engine MODEL.

    An unreadable image is skipped with a warning and listed at the end (exit status 2),
    unless --strict.
    """
    try:
        results = predict(model, list(images), top_k, strict, max_pixels)
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
