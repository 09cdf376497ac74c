"""The report stage: reports/report.md and models/MODEL_CARD.md rendered from the other stages'
JSON alone (scores, extent, export, engine, the deployable's metadata, the study). Nothing is
scored or timed here, so `lio study collect` or a changed sentence re-renders in a second."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.extent import MAPS, Extent
from pipeline.artifacts.runtime import RuntimeChoice, ServingLoad
from pipeline.artifacts.scores import Scores
from pipeline.core.io import write_text
from pipeline.core.markdown import table
from pipeline.core.timing import P99_CALLS
from pipeline.evaluate.card import model_card, study_line
from pipeline.evaluate.runtimes import runtime_lines
from pipeline.evaluate.serving import serving_lines
from pipeline.evaluate.tables import backend_rows, gate_lines, pair


@dataclass(frozen=True)
class RenderFiles:
    scores: Path
    extent: Path
    export_report: Path
    runtime: Path  # reports/runtime.json
    serving: Path  # reports/serving.json (benchmarks/serve.py), when it ran
    engine_info: Path
    metadata: Path  # models/<arch>.json
    study: Path
    masks: Path  # linked from report.md
    report: Path
    model_card: Path


def render(files: RenderFiles) -> list[str]:
    """Write report.md and MODEL_CARD.md; returns report.md's lines."""
    scores, extent = Scores.load(files.scores), Extent.load(files.extent)
    meta = Deployable.load(files.metadata)
    export = ExportReport.load(files.export_report)
    engine = EngineInfo.load(files.engine_info) if files.engine_info.exists() else None
    advice = recommendations(scores)
    lines = report_lines(scores, extent, export, files.masks.name)
    if files.runtime.exists():
        lines += ["", *runtime_lines(RuntimeChoice.load(files.runtime))]
    if files.serving.exists():
        lines += ["", *serving_lines(ServingLoad.load(files.serving))]
    lines += ["", "## What to deploy", "", *[f"- **{target}**: {text}" for target, text in advice.items()]]
    write_text(files.report, "\n".join(lines) + "\n")
    write_text(files.model_card, model_card(meta, scores, export, engine, advice, study_line(files.study)))
    return lines


def recommendations(scores: Scores) -> dict[str, str]:
    """Per target, the artifact to deploy (decided by pipeline/deploy/choice.py), in words."""
    out = {}
    for r in scores.recommendations:
        m = r.measured
        if m is not None:
            out[r.target] = (
                f"`{r.file}`: {m.throughput:.0f} img/s at batch {scores.throughput_batch} "
                f"({m.throughput_vs_fp32:.2f}x FP32), p50 {m.p50_ms:.2f} ms at batch 1 "
                f"({m.p50_vs_fp32:.2f}x FP32), test top-1 {m.top1:.4f} {pair(m.top1_ci95, '.3f')} "
                f"(FP32 {m.top1_fp32:.4f}); runs on {r.runtime}, the fastest candidate that passed its gate there"
            )
        elif r.built:
            out[r.target] = f"`{r.file}` ({r.precision}, {r.engine})" + (f"; {r.fallback}" if r.fallback else "")
        else:
            out[r.target] = (
                f"build the engine on the target GPU (`dvc repro engine` with TensorRT installed) from "
                f"`{r.file}` ({r.precision}, its gate {r.gate}); not built here: {r.reason}"
                + (f"; {r.fallback}" if r.fallback else "")
            )
    return out


def backend_columns(scores: Scores) -> list[tuple[str, str, str]]:
    return [
        ("backend", "backend", ""),
        ("device", "device / provider", ""),
        ("top1_ci", "top-1 [95% CI]", ""),
        ("top5", "top-5", ".4f"),
        ("agreement", "top-1 agreement", ".4f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p90_ms", "p90 ms", ".2f"),
        (
            "p99_ms",
            "p99 ms" if scores.latency_calls >= P99_CALLS else f"p99 ms (n/a: {scores.latency_calls} calls)",
            ".2f",
        ),  # noqa: E501
        ("throughput", f"img/s @ batch {scores.throughput_batch}", ".1f"),
        ("size_mb", "MiB", ".1f"),
    ]


def report_lines(scores: Scores, extent: Extent, export: ExportReport, masks_file: str) -> list[str]:
    columns = backend_columns(scores)
    lines = [
        "# LIO report",
        "",
        f"Test split: {scores.test_images} images. Latency at batch {scores.latency_batch} from {scores.latency_calls} "
        f"timed calls (a p99 needs at least {P99_CALLS}: `report.iters`), throughput at batch "
        f"{scores.throughput_batch} (`engine.max_batch`). Top-1 with its 95% Wilson interval.",
        "",
        table(backend_rows(scores), columns),
        "",
    ]
    lines += [f"- {name}: not measured: {why}" for name, why in scores.skipped.items()]
    lines += ["", "## Precision gates", "", f"Decided on {export.decided_on}; test top-1 beside.", ""]
    lines += gate_lines(export)
    ranked = [c for c in scores.per_class if c.top1 is not None]
    worst = sorted(ranked, key=lambda c: (c.top1, c.name))[:5]
    lines += [
        "",
        f"## Per class ({scores.deployed})",
        "",
        "Lowest top-1 (all classes in `reports/per_class.json`, "
        "confusion matrix: `dvc plots show reports/confusion.json`):",
        "",
        table(
            [asdict(c) for c in worst],
            [
                ("name", "class", ""),
                ("images", "test images", ""),
                ("top1", "top-1", ".3f"),
                ("most_confused_with", "most often predicted instead", ""),
            ],
        ),
        "",
    ]
    if scores.confusions:
        lines += [
            "Most frequent confusions:",
            "",
            table(
                [asdict(c) for c in scores.confusions],
                [("actual", "actual", ""), ("predicted", "predicted", ""), ("images", "images", "")],
            ),
            "",
        ]
    return lines + extent_lines(extent, masks_file)


def extent_lines(extent: Extent, masks_file: str) -> list[str]:
    """The heads' maps against the true masks, beside reference maps at the same resolution."""
    if not extent.stages:
        return []
    rows = [
        {"stage": s, "cells": d.cells, "images": d.images, **d.iou, "pointing": d.pointing, "chance": d.pointing_chance}
        for s, d in extent.stages.items()
    ]
    fmt = ".3f"
    cols = [("stage", "stage", ""), ("cells", "N", ""), ("images", "images", "")]
    cols += [(name, name, fmt) for name in MAPS if name in rows[0]]
    cols += [("pointing", "pointing", fmt), ("chance", "pointing chance", fmt)]
    return [
        "## Object extent",
        "",
        f"IoU with the true masks of each map thresholded at {extent.threshold} after min-max "
        "normalisation, on the test images with masks. m' is OEL's predicted extent, M the pseudo mask; "
        "the next columns are reference maps at the same N: all-ones, a centred disc with the mean "
        f"object area of the training masks ({extent.train_mask_area:.3f} of the image), a seeded "
        "random map, and the ceiling (the true mask pooled to N x N, the best any N x N map can score). "
        "Pointing: share of images whose reference cell for SCL (argmax of m', or of M without OEL) "
        "lies on the object, beside the share of object cells (a random cell's rate).",
        "",
        table(rows, cols),
        "",
        f"![extent]({masks_file})",
    ]
