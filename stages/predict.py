"""`lio predict MODEL IMAGE...`: the deployer's smoke test (not a DVC stage)."""
import json

import click

from pipeline.errors import PipelineError
from pipeline.predict import predict


@click.command("predict")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-k", "--top-k", default=5, show_default=True, help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(model, images, top_k, as_json):
    """Top-k classes of IMAGES (files or folders) from a .pt, .onnx or .engine MODEL."""
    try:
        results = predict(model, list(images), top_k)
    except (PipelineError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(r["image"])
        for t in r["top"]:
            click.echo(f"  {t['probability']:.3f}  {t['class']}")
