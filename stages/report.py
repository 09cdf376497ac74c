"""`lio report`: param `model.arch` (which metadata); reports/scores.json, extent.json, export.json,
models/engine/engine.json, reports/study.json -> reports/report.md, models/MODEL_CARD.md."""

import click

from pipeline.config.model import ArchParams
from pipeline.core import paths
from pipeline.evaluate.render import RenderFiles, render
from stages.command import with_params


@click.command("report")
@with_params(ArchParams)
def command(cfg):
    """Render report.md and the model card from the other stages' JSON (nothing is re-timed)."""
    files = RenderFiles(
        scores=paths.SCORES,
        extent=paths.EXTENT,
        export_report=paths.EXPORT_REPORT,
        runtime=paths.RUNTIME,
        serving=paths.SERVING,
        engine_info=paths.ENGINE_INFO,
        metadata=paths.metadata(paths.stripped(cfg.model.arch)),
        study=paths.STUDY,
        masks=paths.MASKS,
        report=paths.REPORT,
        model_card=paths.MODEL_CARD,
    )
    click.echo("\n".join(render(files)))
