"""What every stage command (stages/) shares: --params, the validated Config, clean error exits."""

from __future__ import annotations

import functools
import sys

import click

from pipeline.config import Config, load_config
from pipeline.errors import PipelineError


def with_config(fn):
    """Loads --params into a validated Config; turns the project's own errors into a
    one-line exit 1 (anything else is a bug and keeps its traceback)."""

    @click.option(
        "--params",
        "params_file",
        default="params.yaml",
        show_default=True,
        type=click.Path(dir_okay=False),
        help="The parameters file (DVC's params.yaml).",
    )
    @functools.wraps(fn)
    def wrapper(params_file: str, **kwargs):
        try:
            cfg: Config = load_config(params_file)
            return fn(cfg, **kwargs)
        except PipelineError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)

    return wrapper
