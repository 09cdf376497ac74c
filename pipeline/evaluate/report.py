"""The report: every backend available here scored on the test split (accuracy, agreement,
latency, size), per-class results of the deployed model, and the localisation evidence
of the trained heads, written to reports/ as JSON (metrics, plots) and Markdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import Config
from pipeline.data.dataset import batches, load_image, load_pair, logits_over
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy import onnx_runtime
from pipeline.deploy.engine import EngineError, EngineRunner
from pipeline.deploy.runners import load_deployable, torch_runner
from pipeline.evaluate.figures import extent_figure
from pipeline.evaluate.localisation import IOU, MAPS, evaluate_maps, iou, mean_area
from pipeline.evaluate.metrics import accuracy, agreement, confusions, per_class
from pipeline.evaluate.timing import latency, throughput
from pipeline.io import atomic_path, write_json, write_text
from pipeline.lio.checkpoint import load_trained
from pipeline.lio.sampler import group_positives
from pipeline.paths import require


@dataclass(frozen=True)
class ReportFiles:
    """What the report reads (the other stages' outputs) and writes; `lio report` passes
    pipeline/paths.py's table, the tests their own folders."""

    prepared: Path
    trained: Path
    weights: Path  # the stripped plain model (its .json beside it)
    onnx: dict[str, Path]
    export_report: Path
    engine: Path
    engine_info: Path
    metrics: Path
    report: Path
    model_card: Path
    latency: Path
    masks: Path
    localisation: Path
    per_class: Path
    confusion: Path


@dataclass
class Backend:
    """One way of running the deployed model here: a name for the tables, a numpy -> numpy call,
    the file it runs, the device or provider that really runs it, and how to wait for it."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    file: Path
    device: str
    sync: Callable[[], Any] = lambda: None


def backends(
    model: torch.nn.Module, files: ReportFiles, cuda: bool, gates: dict | None = None
) -> tuple[list[Backend], dict[str, str]]:
    """Everything that runs here; and what was skipped, with why."""
    found = [Backend("pytorch", torch_runner(model, "cpu"), files.weights, "cpu")]
    skipped: dict[str, str] = {}
    if cuda:
        cuda_run = torch_runner(model, "cuda")
        found.append(Backend("pytorch-cuda", cuda_run, files.weights, "cuda", sync=torch.cuda.synchronize))
    gates = gates or {}  # reports/export.json: a variant its gate rejected is not a backend
    for precision, path in files.onnx.items():
        if gates.get(precision, {}).get("status") == "rejected":
            g = gates[precision]["gate"]
            skipped[f"onnxruntime-{precision}"] = (
                f"rejected by its gate (validation top-1 drop {g['val_top1_drop']:+.4f}, agreement "
                f"{g['val_agreement']:.4f}; reports/export.json)"
            )
            continue
        if not path.exists():
            skipped[f"onnxruntime-{precision}"] = (
                f"{path} not found (not in export.precisions, or `lio export` not run)"
            )
            continue
        sess = onnx_runtime.session(path, "cuda" if cuda else "cpu")
        run = partial(onnx_runtime.run, sess)
        found.append(Backend(f"onnxruntime-{precision}", run, path, onnx_runtime.provider(sess)))
    info = engine_info(files.engine_info)
    if info.get("built"):
        try:
            found.append(
                Backend(
                    f"tensorrt-{info['precision']}",
                    EngineRunner(files.engine, files.engine_info),
                    files.engine,
                    info["gpu"]["name"],
                )
            )
        except EngineError as e:
            skipped["tensorrt"] = str(e)
    else:
        skipped["tensorrt"] = info.get("reason", "not built")
    return found, skipped


def score_localisation(cfg: Config, files: ReportFiles, rows: list[dict], preset) -> dict:
    """Per LIO stage: IoU of m' and M beside the reference predictors, pointing accuracy
    (pipeline.evaluate.localisation), on the test images with true masks; and reports/masks.png,
    which every run writes (a baseline's shows the images and masks alone)."""
    model, blob = load_trained(require(files.trained, "train"))
    P, threshold = blob["lio"]["P"], cfg.report.mask_threshold
    test = [r for r in rows if r["split"] == "test"]
    masked = [r for r in test if r["mask"]]
    draw_masks(cfg, files.masks, model, masked or test, preset, P, threshold, with_masks=bool(masked))
    if not model.stages or not masked:
        return {}
    train_masks = [r for r in rows if r["split"] == "train" and r["mask"]]
    area = mean_area(train_masks, preset, seed=cfg.seed)
    stages = evaluate_maps(model, masked, preset, P, threshold, area, cfg.seed)
    return {"stages": stages, "train_mask_area": area, "threshold": threshold}


def draw_masks(
    cfg: Config, out: Path, model, test: list[dict], preset, P: int, threshold: float, with_masks: bool
) -> None:
    """One test image per class (round robin), each with P positives of its class."""
    by_class: dict[int, list[dict]] = {}
    for r in test:
        by_class.setdefault(r["label"], []).append(r)
    classes = sorted(by_class)
    chosen = [
        by_class[classes[i % len(classes)]][i // len(classes)]
        for i in range(cfg.report.mask_images)
        if i // len(classes) < len(by_class[classes[i % len(classes)]])
    ]
    rng = np.random.default_rng(cfg.seed)
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    for r in chosen:
        pool = [q for q in by_class[r["label"]] if q is not r] or [r]
        group = [r] + [pool[i] for i in rng.choice(len(pool), P, replace=len(pool) < P)]
        if with_masks:
            pairs = [load_pair(q, preset) for q in group]
            images += [p[0] for p in pairs]
            masks.append(pairs[0][1])
        else:
            images += [preset(load_image(q["path"], q["crop_bottom"])) for q in group]
    maps = model.extent_maps(torch.stack(images), group_positives(len(chosen), P))
    anchors = slice(0, len(images), P + 1)
    true = torch.stack([m for m in masks if m is not None]) if with_masks else None
    columns = {f"{name} {s}": m[anchors] for s, d in maps.items() for name, m in d.items() if name != "ref"}
    ious = {title: iou(m, true, threshold) for title, m in columns.items()} if true is not None else {}
    with atomic_path(out) as tmp:
        extent_figure(tmp, torch.stack(images)[anchors], columns, true, ious)


def write_report(cfg: Config, files: ReportFiles) -> list[str]:
    """Score, time and write everything; returns the Markdown lines."""
    rows, classes = read_manifest(require(files.prepared, "prepare"))
    model, meta = load_deployable(require(files.weights, "strip"))
    preset = eval_preset(meta["preprocess"])
    test = [r for r in rows if r["split"] == "test"]
    labels = np.array([r["label"] for r in test])
    gates = json.loads(files.export_report.read_text()) if files.export_report.exists() else {}
    found, skipped = backends(model, files, torch.cuda.is_available(), gates)
    batch = cfg.engine.max_batch
    sample = next(batches(test, preset, batch)).numpy()
    big = np.resize(sample, (batch, *sample.shape[1:]))  # the largest profile batch, for throughput
    print(f"scoring {', '.join(b.name for b in found)} on {len(test)} test images")
    scored = logits_over({b.name: b.run for b in found}, test, preset, batch)
    rc, table = cfg.report, []
    for b in found:
        print(f"timing {b.name} ({b.device})")
        logits = scored[b.name]
        table.append(
            {
                "backend": b.name,
                "device": b.device,
                **accuracy(logits, labels),
                "agreement": agreement(logits, scored["pytorch"]),
                **latency(b.run, sample[:1], rc.warmup, rc.iters, b.sync),
                "throughput": throughput(b.run, big, rc.throughput_iters, b.sync),
                "size_mb": Path(b.file).stat().st_size / 2**20,
            }
        )

    # per-class results and confusions come from the artifact that ships: the engine where it was
    # built and runs, else ONNX Runtime FP32
    engines = [name for name in scored if name.startswith("tensorrt-")]
    deployed = engines[0] if engines else ("onnxruntime-fp32" if "onnxruntime-fp32" in scored else "pytorch")
    predicted = scored[deployed].argmax(1)
    classes_table = per_class(predicted, labels, classes)
    mistakes = confusions(predicted, labels, classes)
    write_json(
        files.confusion,
        [{"actual": classes[a], "predicted": classes[p]} for a, p in zip(labels.tolist(), predicted.tolist())],
    )
    write_json(files.per_class, {"backend": deployed, "classes": classes_table})

    loc = score_localisation(cfg, files, rows, preset)
    metrics = {
        "test_top1": table[0]["top1"],
        "backends": {r["backend"]: r for r in table},
        "skipped": skipped,
        "localisation": loc.get("stages", {}),
    }
    write_json(files.metrics, metrics)
    write_json(files.latency, [{"backend": r["backend"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]} for r in table])
    write_json(
        files.localisation,
        [
            {"map": f"{s} {name}", "iou": d[IOU + name]}
            for s, d in loc.get("stages", {}).items()
            for name in MAPS
            if IOU + name in d
        ],
    )
    engine = engine_info(files.engine_info)
    advice = recommendations(table, gates, engine)
    lines = report_lines(cfg, table, skipped, len(labels), deployed, classes_table, mistakes, loc, files.masks.name)
    lines += ["", "## What to deploy", "", *[f"- **{target}**: {text}" for target, text in advice.items()]]
    write_text(files.report, "\n".join(lines) + "\n")
    write_text(
        files.model_card,
        model_card(cfg, rows, classes, table, gates, engine, advice, deployed, meta["preprocess"]),
    )
    return lines


def engine_info(path: Path) -> dict[str, Any]:
    """models/engine/engine.json, or why there is none."""
    return json.loads(path.read_text()) if path.exists() else {"built": False, "reason": f"{path} not found"}


def recommendations(table: list[dict], gates: dict, engine: dict) -> dict[str, str]:
    """Per target, the artifact to deploy, from the numbers measured here: on a CPU the fastest
    ONNX Runtime variant at batch 32 that passed its gate; on a GPU the engine (or how to build it)."""
    cpu = [
        r
        for r in table
        if r["backend"].startswith("onnxruntime-")
        and r["device"] == "CPUExecutionProvider"
        and gates.get(r["backend"].removeprefix("onnxruntime-"), {}).get("status") in ("passed", "reference")
    ]
    out = {}
    if cpu:
        fp32 = next((r for r in cpu if r["backend"] == "onnxruntime-fp32"), cpu[0])
        best = max(cpu, key=lambda r: r["throughput"])
        precision = best["backend"].removeprefix("onnxruntime-")
        out["CPU (ONNX Runtime)"] = (
            f"`{gates.get(precision, {}).get('file', best['backend'])}`: {best['throughput']:.0f} img/s at batch 32 "
            f"({best['throughput'] / fp32['throughput']:.2f}x FP32), p50 {best['p50_ms']:.2f} ms at batch 1 "
            f"({best['p50_ms'] / fp32['p50_ms']:.2f}x FP32), test top-1 {best['top1']:.4f} (FP32 {fp32['top1']:.4f}); "
            "measured on this machine's CPU"
        )
    if engine.get("built"):
        out["GPU (TensorRT)"] = (
            f"`models/engine/model.engine` ({engine['precision']}, TensorRT {engine['tensorrt']}, "
            f"{engine['gpu']['name']}, compute capability {engine['gpu']['compute_capability']})"
            + (f"; {engine['fallback']}" if engine.get("fallback") else "")
        )
    else:
        precision = engine.get("precision", "fp16")
        out["GPU (TensorRT)"] = (
            f"build the engine on the target GPU (`dvc repro engine` with TensorRT installed) from "
            f"`{gates.get(precision, {}).get('file', 'models/onnx/')}` ({precision}, its gate "
            f"{gates.get(precision, {}).get('status', 'not run')}); not built here: {engine.get('reason', 'unknown')}"
        )
    return out


def model_card(cfg: Config, rows, classes, table, gates, engine, advice, deployed, preprocess: dict) -> str:
    """models/MODEL_CARD.md: what the model is, how it was made and measured, and its limits."""
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    lio = cfg.lio
    method = (
        f"LIO heads on {', '.join(lio.stages)} (P {lio.P}, alpha {lio.alpha}, beta {lio.beta}, target_grad "
        f"{str(lio.target_grad).lower()}, scl_weights {lio.scl_weights}, mask_source {lio.mask_source}), "
        "removed after training"
        if lio.stages
        else "plain training (lio.stages: [], the baseline)"
    )
    t = cfg.train
    gate_rows = [
        f"| {p} | {g['status']} | {g['gate']['val_top1_drop']:+.4f} (max {g['gate']['max_top1_drop']}) | "
        f"{g['gate']['val_agreement']:.4f} (min {g['gate']['min_agreement']}) | {g['gate']['test_top1']:.4f} |"
        for p, g in gates.items()
        if isinstance(g, dict) and "gate" in g
    ]
    pre = json.dumps(preprocess)
    study = _study_line()
    lines = [
        f"# Model card: {cfg.model.arch} trained with Look-into-Object",
        "",
        f"**What it is.** A plain torchvision `{cfg.model.arch}` with {len(classes)} classes: the network that "
        f"ships is exactly torchvision's (proved in `reports/parity.json`); during training it carried {method}.",
        "",
        f"**Data.** `data.format: {cfg.data.format}` "
        f"({cfg.data.root if cfg.data.format != 'synthetic' else 'the embedded synthetic set'}): "
        f"{splits['train']} training, {splits['val']} validation, {splits['test']} test images. The best epoch is "
        "chosen on validation; the test split is read once.",
        "",
        f"**Training.** {t.epochs} epochs of {t.optimizer} (lr {t.lr}, new layers x{t.head_lr_mult}, weight decay "
        f"{t.weight_decay}, {t.schedule} schedule), batch {t.batch_size}, seed {cfg.seed}, weights from "
        f"`model.pretrained: {cfg.model.pretrained}`.",
        "",
        "**Preprocessing** (also in every artifact's metadata; `pipeline.deploy.preprocess.preprocess` does it): "
        f"`{pre}`: decode RGB, resize the shorter side, centre-crop, scale to [0, 1], normalise.",
        "",
        "**Accuracy and latency** per backend, on the test split, on the machine that ran the report:",
        "",
        markdown_table(
            table,
            [
                ("backend", "backend", ""),
                ("device", "device", ""),
                ("top1", "top-1", ".4f"),
                ("agreement", "agreement with PyTorch", ".4f"),
                ("p50_ms", "p50 ms (batch 1)", ".2f"),
                ("throughput", f"img/s (batch {cfg.engine.max_batch})", ".1f"),
            ],
        ),
        "",
        f"Per-class results (`reports/per_class.json`) come from `{deployed}`.",
        "",
        f"**Precision gates**, decided on {gates.get('gates_decided_on', 'the validation split')}; test top-1 beside:",
        "",
        "| variant | status | val top-1 drop | val agreement | test top-1 |",
        "|---|---|---|---|---|",
        *gate_rows,
        "",
        "**Engine.** "
        + (
            f"TensorRT {engine['tensorrt']}, {engine['precision']}, built on {engine['gpu']['name']} (compute "
            f"capability {engine['gpu']['compute_capability']}), compatibility {engine.get('compatibility')}."
            if engine.get("built")
            else f"not built here ({engine.get('reason', 'unknown')}); `dvc repro engine` on the target GPU builds "
            f"it from the {engine.get('precision', cfg.engine.precision)} ONNX variant."
        ),
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
        f"{100 * (0.25 / max(1, splits['test'])) ** 0.5:.1f} points. The embedded default dataset is synthetic: "
        "its numbers show the pipeline works, not how a model does on photographs.",
        "",
    ]
    return "\n".join(lines)


def _study_line() -> str:
    """The study's main comparison, and its choice of the default when that is another variant,
    with their intervals, from reports/study.json (when present)."""
    path = Path("reports/study.json")
    if not path.exists():
        return "no study recorded (`lio study`)."
    parts = []
    for preset, section in json.loads(path.read_text()).get("presets", {}).items():
        chosen = (section.get("choice") or {}).get("best")
        for name in dict.fromkeys(["lio", chosen]):
            v = section.get("variants", {}).get(name)
            if not v or v["test_vs_baseline"]["ci95"] is None:
                continue
            d = v["test_vs_baseline"]
            parts.append(
                f"{preset} preset: {'LIO' if name == 'lio' else name}"
                f"{' (its choice by validation)' if name == chosen else ''} vs baseline {d['mean']:+.3f} test top-1, "
                f"95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] over {d['n']} paired seeds ({d['wins']} wins)"
            )
    return (
        "; ".join(parts) + " (reports/study.md)."
        if parts
        else "the study has too few paired seeds yet (reports/study.md)."
    )


def report_lines(cfg, table, skipped, n_test, deployed, classes_table, mistakes, loc, masks_file: str) -> list[str]:
    batch = cfg.engine.max_batch
    columns = [
        ("backend", "backend", ""),
        ("device", "device / provider", ""),
        ("top1", "top-1", ".4f"),
        ("top5", "top-5", ".4f"),
        ("agreement", "top-1 agreement", ".4f"),
        ("p50_ms", "p50 ms", ".2f"),
        ("p90_ms", "p90 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("throughput", f"img/s @ batch {batch}", ".1f"),
        ("size_mb", "MiB", ".1f"),
    ]
    lines = [
        "# LIO report",
        "",
        f"Test split: {n_test} images. Latency at batch 1.",
        "",
        markdown_table(table, columns),
        "",
    ]
    lines += [f"- {name}: not measured: {why}" for name, why in skipped.items()]
    worst = sorted((r for r in classes_table if r["top1"] is not None), key=lambda r: (r["top1"], r["class"]))[:5]
    lines += [
        "",
        f"## Per class ({deployed})",
        "",
        "Lowest top-1 (all classes in `reports/per_class.json`, "
        "confusion matrix: `dvc plots show reports/confusion.json`):",
        "",
        markdown_table(
            worst,
            [
                ("class", "class", ""),
                ("images", "test images", ""),
                ("top1", "top-1", ".3f"),
                ("most_confused_with", "most often predicted instead", ""),
            ],
        ),
        "",
    ]
    if mistakes:
        lines += [
            "Most frequent confusions:",
            "",
            markdown_table(
                mistakes, [("actual", "actual", ""), ("predicted", "predicted", ""), ("images", "images", "")]
            ),
            "",
        ]
    if loc:
        rows = [{"stage": s, **d} for s, d in loc["stages"].items()]
        fmt = ".3f"
        cols = [("stage", "stage", ""), ("N", "N", ".0f"), ("images", "images", "")]
        cols += [(IOU + name, name, fmt) for name in MAPS if IOU + name in rows[0]]
        cols += [("pointing", "pointing", fmt), ("pointing chance", "pointing chance", fmt)]
        lines += [
            "## Object extent",
            "",
            f"IoU with the true masks of each map thresholded at {loc['threshold']} after min-max "
            "normalisation, on the test images with masks. m' is OEL's predicted extent, M the pseudo mask; "
            "the next columns are reference maps at the same N: all-ones, a centred disc with the mean "
            f"object area of the training masks ({loc['train_mask_area']:.3f} of the image), a seeded "
            "random map, and the ceiling (the true mask pooled to N x N, the best any N x N map can score). "
            "Pointing: share of images whose reference cell for SCL (argmax of m', or of M without OEL) "
            "lies on the object, beside the share of object cells (a random cell's rate).",
            "",
            markdown_table(rows, cols),
            "",
            f"![extent]({masks_file})",
        ]
    return lines


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """rows of dicts -> a Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("n/a" if v is None else format(v, fmt) if fmt else str(v))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])
