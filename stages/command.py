"""What every stage command shares: --params, the stage's validated view of it, clean error exits."""

from __future__ import annotations

import contextlib
import functools
import sys

import click

from pipeline.config.schema import Params, load
from pipeline.core.errors import PipelineError


def with_params(view: type[Params] = Params):
    """Loads --params into `view` (the sections the stage reads, checked before any work); turns
    the project's own errors into a one-line exit 1 (anything else is a bug and keeps its traceback)."""

    def decorate(fn):
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
            with one_line_errors():
                return fn(load(params_file, view), **kwargs)

        return wrapper

    return decorate


@contextlib.contextmanager
def one_line_errors():
    """The project's own errors as a one-line exit 1 (anything else is a bug and keeps its traceback)."""
    try:
        yield
    except PipelineError as e:
        click.secho(f"error: {e}", fg="red", err=True)
        sys.exit(1)
