"""The report stage: reports/report.md and models/MODEL_CARD.md rendered from the other stages'
JSON alone (scores, extent, export, engine, the deployable's metadata, the study). Nothing is
scored or timed here, so `lio study collect` or a changed sentence re-renders in a second."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.export import ExportReport, GateResult, Variant
from pipeline.artifacts.extent import IOU, MAPS, Extent
from pipeline.artifacts.runtime import RuntimeChoice
from pipeline.artifacts.scores import BackendScore, Scores
from pipeline.artifacts.study import Study
from pipeline.config.train import TrainParams
from pipeline.core.io import write_text
from pipeline.core.markdown import table
from pipeline.core.timing import P99_CALLS
from pipeline.evaluate.runtimes import runtime_lines


@dataclass(frozen=True)
class RenderFiles:
    scores: Path
    extent: Path
    export_report: Path
    runtime: Path  # reports/runtime.json
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
    lines += ["", "## What to deploy", "", *[f"- **{target}**: {text}" for target, text in advice.items()]]
    write_text(files.report, "\n".join(lines) + "\n")
    write_text(files.model_card, model_card(meta, scores, export, engine, advice, study_line(files.study)))
    return lines


def _pair(ci, fmt: str) -> str:
    return f"[{format(ci[0], fmt)}, {format(ci[1], fmt)}]"


def _ci(r: BackendScore) -> str:
    return f"{r.top1:.4f} {_pair(r.top1_ci95, '.3f')}"


def _backend_rows(scores: Scores) -> list[dict]:
    """The backends as table rows, top-1 written with its interval."""
    return [{**asdict(r), "top1_ci": _ci(r)} for r in scores.backends]


def recommendations(scores: Scores) -> dict[str, str]:
    """Per target, the artifact to deploy (decided by pipeline/deploy/choice.py), in words."""
    out = {}
    for r in scores.recommendations:
        m = r.measured
        if m is not None:
            out[r.target] = (
                f"`{r.file}`: {m.throughput:.0f} img/s at batch {scores.throughput_batch} "
                f"({m.throughput_vs_fp32:.2f}x FP32), p50 {m.p50_ms:.2f} ms at batch 1 "
                f"({m.p50_vs_fp32:.2f}x FP32), test top-1 {m.top1:.4f} {_pair(m.top1_ci95, '.3f')} "
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


def model_card(
    meta: Deployable,
    scores: Scores,
    export: ExportReport,
    engine: EngineInfo | None,
    advice: dict[str, str],
    study: str,
) -> str:
    """models/MODEL_CARD.md: what the model is, how it was made and measured, and its limits. The
    training settings come from the deployable's metadata (they travel with the weights)."""
    t = meta.training or TrainParams()
    lio, train, data = t.lio, t.train, t.data
    images = meta.summary.images if meta.summary else {}
    method = (
        f"LIO heads on {', '.join(lio.stages)} (P {lio.P}, alpha {lio.alpha}, beta {lio.beta}, "
        f"target_grad {str(lio.target_grad).lower()}, scl_weights {lio.scl_weights}, mask_source "
        f"{lio.mask_source}), removed after training"
        if lio.stages
        else "plain training (lio.stages: [], the baseline)"
    )
    fmt = data.format
    lines = [
        f"# Model card: {meta.arch} trained with Look-into-Object",
        "",
        f"**What it is.** A plain torchvision `{meta.arch}` with {meta.num_classes} classes: the network that "
        f"ships is exactly torchvision's (proved in `reports/parity.json`); during training it carried {method}.",
        "",
        f"**Data.** `data.format: {fmt}` ({data.root if fmt != 'synthetic' else 'the embedded synthetic set'}): "
        f"{images.get('train', '?')} training, {images.get('val', '?')} validation, {scores.test_images} test "
        "images. The best epoch is chosen on validation; the test split is read once.",
        "",
        f"**Training.** {train.epochs} epochs of {train.optimizer} (lr {train.lr}, new layers "
        f"x{train.head_lr_mult}, weight decay {train.weight_decay}, {train.schedule} schedule), "
        f"batch {train.batch_size}, seed {t.seed}, weights from `model.pretrained: {t.model.pretrained}`"
        + (" with torchvision's zero-initialised residual branches" if t.model.zero_init_residual else "")
        + f", `train.amp: {train.amp}` (bf16 autocast where the device computes bf16 natively).",
        "",
        "**Preprocessing** (also in every artifact's metadata; `pipeline.deploy.preprocess.preprocess` does it): "
        f"`{json.dumps(asdict(meta.preprocess))}`: decode RGB, resize the shorter side, centre-crop, scale to "
        "[0, 1], normalise.",
        "",
        "**Accuracy and latency** per backend, on the test split, on the machine that ran the report "
        "(top-1 with its 95% Wilson interval):",
        "",
        table(
            _backend_rows(scores),
            [
                ("backend", "backend", ""),
                ("device", "device", ""),
                ("top1_ci", "top-1 [95% CI]", ""),
                ("agreement", "agreement with PyTorch", ".4f"),
                ("p50_ms", "p50 ms (batch 1)", ".2f"),
                ("throughput", f"img/s (batch {scores.throughput_batch})", ".1f"),
            ],
        ),
        "",
        f"Per-class results (`reports/per_class.json`) come from `{scores.deployed}`.",
        "",
        f"**Precision gates**, decided on {export.decided_on}; test top-1 beside:",
        "",
        *gate_lines(export),
        "",
        "**Engine.** " + engine_sentence(engine),
        "",
        "**What to deploy:**",
        "",
        *[f"- {target}: {text}" for target, text in advice.items()],
        "",
        f"**Does LIO help?** {study}",
        "",
        "**Intended use and limits.** Image classification of the classes above, on images like the training data "
        "and preprocessed exactly as stated. Not evaluated for other domains, for calibration of its probabilities, "
        "or for robustness to corruptions; accuracy on a small test split carries a binomial error of about "
        f"{100 * (0.25 / max(1, scores.test_images)) ** 0.5:.1f} points (the intervals above). The embedded default "
        "dataset is synthetic: its numbers show the pipeline works, not how a model does on photographs.",
        "",
    ]
    return "\n".join(lines)


GATE_COLUMNS = [
    ("variant", "variant", ""),
    ("status", "status", ""),
    ("images", "images", ""),
    ("ratio", "top-1 / FP32's = ratio", ""),
    ("drop", "top-1 drop [95% CI]", ""),
    ("agreement", "agreement with FP32 [95% CI]", ""),
    ("test_top1", "test top-1", ".4f"),
]


def gate_lines(export: ExportReport) -> list[str]:
    """Every gate with its rule, image count and intervals; for a rejected variant, by how much it
    missed; for an INT8 one, what it kept in FP32 (and what that cost in speed here) and how every
    layer in INT8 fared on the selection images."""
    rows, notes, rule = [], [], ""
    for p, v in export.variants.items():
        g = v.gate
        if g is None:
            continue
        rule = g.rule
        rows.append(
            {
                "variant": p,
                "status": v.status,
                "images": g.images,
                "ratio": f"{g.top1:.4f} / {g.top1_fp32:.4f} = {g.top1_ratio:.4f} (min {g.min_top1_ratio})",
                "drop": f"{g.top1_drop:+.4f} {_pair(g.top1_drop_ci95, '+.4f')}",
                "agreement": f"{g.agreement:.4f} {_pair(g.agreement_ci95, '.3f')} (floor {g.min_agreement})",
                "test_top1": g.test_top1,
            }
        )
        if note := _gate_note(p, v, g):
            notes.append(note)
    head = [f"Rule: {rule}; agreement with FP32 is a floor against broken quantization, not the accuracy rule.", ""]
    return head + table(rows, GATE_COLUMNS).splitlines() + ([""] + notes if notes else [])


def _gate_note(p: str, v: Variant, g: GateResult) -> str | None:
    kept_layers = v.kept_in_fp32
    kept = f"{len(kept_layers)} layer{'s' * (len(kept_layers) != 1)} kept in FP32 ({', '.join(kept_layers)})"
    chose = ""
    if v.selection:
        first = v.selection[0]
        flips = round((1 - first.agreement) * first.images)
        chose = (
            f"; chosen before the gate on {first.images} selection images, where the graph as first made had "
            f"top-1 {first.top1:.4f} against FP32's {first.top1_fp32:.4f} and agreed on "
            f"{first.agreement:.4f} ({flips} changed class); {len(v.selection)} selection tr"
            + ("ies" if len(v.selection) > 1 else "y")
        )
    speed = v.fallback_speed
    cost = (
        f"; on this CPU at batch {speed.batch} it runs {speed.shipped:.0f} img/s against "
        f"{speed.every_layer_int8:.0f} as first made"
        if speed
        else ""
    )
    if not g.passed:
        short = []
        if g.top1_ratio < g.min_top1_ratio:
            short.append(f"top-1 ratio {g.min_top1_ratio - g.top1_ratio:.4f} under its minimum")
        if g.agreement < g.min_agreement:
            short.append(f"agreement {g.min_agreement - g.agreement:.4f} under its floor")
        why = " and ".join(short) or v.rejected_because or "its selection"
        return (
            f"- {p} missed by {why} ({_flips(g)} changed class)"
            + (f", with {kept}" if kept_layers else "")
            + f"{chose}."
        )
    if kept_layers:
        return f"- {p} passed with {kept}{chose}{cost}."
    if v.selection:
        return f"- {p} passed with {v.layers.describe() if v.layers else 'its layers as exported'}{chose}."
    return None


def _flips(g: GateResult) -> str:
    return f"{round((1 - g.agreement) * g.images)} of {g.images} images"


def engine_sentence(engine: EngineInfo | None) -> str:
    if engine is not None and engine.built and engine.gpu is not None:
        return (
            f"TensorRT {engine.tensorrt}, {engine.precision}, built on {engine.gpu.name} (compute capability "
            f"{engine.gpu.compute_capability}), compatibility {asdict(engine.compatibility)}."
        )
    reason = engine.reason if engine else "engine.json not found"
    precision = engine.precision if engine else "chosen"
    return (
        f"not built here ({reason}); `dvc repro engine` on the target GPU builds it from the {precision} ONNX variant."
    )


def study_line(path: Path) -> str:
    """The study's main comparison, and its choice of the default when that is another variant,
    with their intervals, from reports/study.json (when present)."""
    if not path.exists():
        return "no study recorded (`lio study`)."
    parts = []
    for preset, section in Study.read(path).presets.items():
        chosen = section.choice.best if section.choice else None
        for name in dict.fromkeys(["lio", chosen]):
            v = section.variants.get(name) if name else None
            d = v.test_vs_baseline if v is not None else None
            if d is None or d.ci95 is None or d.mean is None:
                continue
            lo, hi = d.ci95
            parts.append(
                f"{preset} preset: {'LIO' if name == 'lio' else name}"
                f"{' (its choice by validation)' if name == chosen else ''} vs baseline {d.mean:+.3f} test top-1, "
                f"95% CI [{lo:+.3f}, {hi:+.3f}] over {d.n} paired seeds ({d.wins} wins)"
            )
    return (
        "; ".join(parts) + " (reports/study.md)."
        if parts
        else "the study has too few paired seeds yet (reports/study.md)."
    )


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
        table(_backend_rows(scores), columns),
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
    rows = [{"stage": s, **d} for s, d in extent.stages.items()]
    fmt = ".3f"
    cols = [("stage", "stage", ""), ("N", "N", ".0f"), ("images", "images", "")]
    cols += [(IOU + name, name, fmt) for name in MAPS if IOU + name in rows[0]]
    cols += [("pointing", "pointing", fmt), ("pointing chance", "pointing chance", fmt)]
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
