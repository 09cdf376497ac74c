"""The `lio` command: one subcommand per pipeline stage, in data-flow order, plus `predict`
and `study`. Each subcommand's module is imported only when it runs, so a stage loads
exactly the code dvc.yaml declares for it."""

import importlib

import click

COMMANDS = (
    "prepare",
    "train",
    "strip",
    "export",
    "runtime",
    "engine",
    "triton",
    "score",
    "localise",
    "report",
    "predict",
    "serve",
    "study",
)


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"stages.{name}").command


@click.group(cls=LazyGroup)
def main() -> None:
    """Look-into-Object training and deployment pipeline (the stages of dvc.yaml)."""
