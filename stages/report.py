"""`lio report`: params `report`, `seed`, `model.arch`, `engine.max_batch` -> reports/
(metrics.json, report.md, latency.json, localisation.json, per_class.json, confusion.json, masks.png)."""

from pathlib import Path

import click

from pipeline import paths
from pipeline.command import with_config
from pipeline.evaluate.report import ReportFiles, write_report


def report_files(arch: str, root: Path = Path(".")) -> ReportFiles:
    """pipeline/paths.py's table under `root` (the repository, where DVC runs the stage)."""
    return ReportFiles(
        prepared=root / paths.PREPARED,
        trained=root / paths.TRAINED,
        weights=root / paths.deployable(arch),
        onnx={precision: root / path for precision, path in paths.ONNX.items()},
        export_report=root / paths.EXPORT_REPORT,
        engine=root / paths.ENGINE,
        engine_info=root / paths.ENGINE_INFO,
        metrics=root / paths.METRICS,
        report=root / paths.REPORT,
        model_card=root / paths.MODEL_CARD,
        latency=root / paths.LATENCY,
        masks=root / paths.MASKS,
        localisation=root / paths.LOCALISATION,
        per_class=root / paths.PER_CLASS,
        confusion=root / paths.CONFUSION,
    )


@click.command("report")
@with_config
def command(cfg):
    """Accuracy, agreement, latency and size of every backend; per-class results; localisation."""
    click.echo("\n".join(write_report(cfg, report_files(cfg.model.arch))))
