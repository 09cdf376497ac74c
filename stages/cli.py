"""The `lio` command: one subcommand per pipeline stage, plus `predict`."""
from __future__ import annotations

import functools
import sys

import click

from pipeline.config import Config, ConfigError, load_config

params_option = click.option(
    "--params", "params_file", default="params.yaml", show_default=True,
    type=click.Path(dir_okay=False), help="The parameters file (DVC's params.yaml).",
)


def with_config(fn):
    """Loads --params into a validated Config; turns expected errors into clean exits."""

    @params_option
    @functools.wraps(fn)
    def wrapper(params_file: str, **kwargs):
        try:
            cfg: Config = load_config(params_file)
            return fn(cfg, **kwargs)
        except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)

    return wrapper


@click.group()
def main() -> None:
    """Look-into-Object training and deployment pipeline (see dvc.yaml)."""


def _register() -> None:
    from stages import engine, export, predict, prepare, report, strip, train

    for module in (prepare, train, strip, export, engine, report, predict):
        main.add_command(module.command)


_register()
