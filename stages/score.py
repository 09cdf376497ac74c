"""`lio score`: params `model.arch`, `report` (timing), `engine.max_batch`; every backend that runs
here -> reports/scores.json, metrics.json, latency.json, per_class.json, confusion.json."""

from pathlib import Path

import click

from pipeline.config.report import ScoreParams
from pipeline.core import paths
from pipeline.evaluate.score import ScoreFiles, score
from stages.command import with_params


def score_files(arch: str, root: Path = Path(".")) -> ScoreFiles:
    """pipeline/core/paths.py's table under `root` (the repository, where DVC runs the stage)."""
    return ScoreFiles(
        prepared=root / paths.PREPARED,
        weights=root / paths.stripped(arch),
        onnx={precision: root / path for precision, path in paths.ONNX.items()},
        export_report=root / paths.EXPORT_REPORT,
        runtime=root / paths.RUNTIME,
        engine=root / paths.ENGINE,
        engine_info=root / paths.ENGINE_INFO,
        scores=root / paths.SCORES,
        metrics=root / paths.METRICS,
        latency=root / paths.LATENCY,
        per_class=root / paths.PER_CLASS,
        confusion=root / paths.CONFUSION,
    )


@click.command("score")
@with_params(ScoreParams)
def command(cfg):
    """Accuracy (with intervals), agreement, latency, throughput and size of every backend here."""
    report = cfg.report
    result = score(
        score_files(cfg.model.arch), cfg.engine.max_batch, report.warmup, report.iters, report.throughput_iters
    )
    for r in result.backends:
        click.echo(
            f"{r.backend} ({r.device}): top-1 {r.top1:.4f}, p50 {r.p50_ms:.2f} ms, "
            f"{r.throughput:.1f} img/s at batch {result.throughput_batch}"
        )
