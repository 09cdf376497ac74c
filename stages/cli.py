"""The `lio` command: one subcommand per pipeline stage, in data-flow order, plus `predict`."""
import click

from stages import engine, export, predict, prepare, report, strip, train


@click.group()
def main() -> None:
    """Look-into-Object training and deployment pipeline (the stages of dvc.yaml)."""


for module in (prepare, train, strip, export, engine, report, predict):
    main.add_command(module.command)
