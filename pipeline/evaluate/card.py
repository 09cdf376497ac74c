"""models/MODEL_CARD.md: what the model is, how it was made and measured, what to deploy and its limits,
from the stages' JSON (the training settings travel with the weights, in the deployable's metadata)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.scores import Scores
from pipeline.artifacts.study import Study
from pipeline.config.train import TrainParams
from pipeline.core.markdown import table
from pipeline.evaluate.tables import backend_rows, gate_lines


def model_card(
    meta: Deployable,
    scores: Scores,
    export: ExportReport,
    engine: EngineInfo | None,
    advice: dict[str, str],
    study: str,
) -> str:
    """models/MODEL_CARD.md: how the model was made, then how it measured, what to deploy, its limits."""
    lines = [
        *made_lines(meta, scores.test_images),
        "**Accuracy and latency** per backend, on the test split, on the machine that ran the report "
        "(top-1 with its 95% Wilson interval):",
        "",
        table(
            backend_rows(scores),
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


def made_lines(meta: Deployable, test_images: int) -> list[str]:
    """What the model is, its data, its training and its preprocessing, from the deployable's metadata."""
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
    return [
        f"# Model card: {meta.arch} trained with Look-into-Object",
        "",
        f"**What it is.** A plain torchvision `{meta.arch}` with {meta.num_classes} classes: the network that "
        f"ships is exactly torchvision's (proved in `reports/parity.json`); during training it carried {method}.",
        "",
        f"**Data.** `data.format: {fmt}` ({data.root if fmt != 'synthetic' else 'the embedded synthetic set'}): "
        f"{images.get('train', '?')} training, {images.get('val', '?')} validation, {test_images} test "
        "images. The best epoch is chosen on validation; the test split is read once.",
        "",
        f"**Training.** {train.epochs} epochs of {train.optimizer} (lr {train.lr}, new layers "
        f"x{train.head_lr_mult}, weight decay {train.weight_decay}, {train.schedule} schedule, label smoothing "
        f"{train.label_smoothing}), batch {train.batch_size}, seed {t.seed}, weights from `model.pretrained: "
        f"{t.model.pretrained}`"
        + (" with torchvision's zero-initialised residual branches" if t.model.zero_init_residual else "")
        + f", `train.amp: {train.amp}` (bf16 autocast where the device computes bf16 natively).",
        "",
        "**Preprocessing** (also in every artifact's metadata; `pipeline.deploy.preprocess.preprocess` does it): "
        f"`{json.dumps(asdict(meta.preprocess))}`: decode RGB, resize the shorter side, centre-crop, scale to "
        "[0, 1], normalise.",
        "",
    ]


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
    """The study's main comparison, and its choice of the default when that is another arm,
    with their intervals, from reports/study.json (when present)."""
    if not path.exists():
        return "no study recorded (`lio study`)."
    parts = []
    for preset, section in Study.read(path).presets.items():
        chosen = section.choice.best if section.choice else None
        for name in dict.fromkeys(["lio", chosen]):
            v = section.arms.get(name) if name else None
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
