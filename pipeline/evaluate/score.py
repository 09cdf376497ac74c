"""The score stage: every backend that runs here scored on the test split (accuracy with its
interval, agreement, size), timed (latency at batch 1, throughput at the engine's largest
batch), and the per-class results of the one that ships. Everything lands in reports/scores.json
(read by the renderer) and the DVC metrics and plots files beside it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.artifacts.engine import EngineInfo
from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.runtime import RuntimeChoice
from pipeline.artifacts.scores import BackendScore, ClassScore, Confusion, Scores
from pipeline.core.io import write_json
from pipeline.core.metrics import accuracy, agreement, wilson
from pipeline.core.paths import require
from pipeline.core.timing import latency, throughput
from pipeline.data.dataset import batches, logits_over
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.deploy.choice import per_class_backend, recommend
from pipeline.deploy.engine import EngineError, EngineRunner
from pipeline.deploy.runners import Backend, load_deployable, onnx_backend, torch_runner
from pipeline.serve.candidates import candidate
from pipeline.serve.runtimes import RuntimeUnavailable


@dataclass(frozen=True)
class ScoreFiles:
    """What the score stage reads and writes; `lio score` passes pipeline/core/paths.py's table."""

    prepared: Path
    weights: Path  # the stripped plain model (its .json beside it)
    onnx: dict[str, Path]
    export_report: Path
    runtime: Path  # reports/runtime.json: the CPU runtime chosen here
    engine: Path
    engine_info: Path
    scores: Path
    metrics: Path
    latency: Path
    per_class: Path
    confusion: Path


def backends(
    model: torch.nn.Module,
    files: ScoreFiles,
    cuda: bool,
    export: ExportReport | None,
    engine: EngineInfo | None,
    runtime: RuntimeChoice | None = None,
) -> tuple[list[Backend], dict[str, str]]:
    """Everything that runs here (the chosen CPU runtime included, when it is not ONNX Runtime); and
    what was skipped, with why."""
    found = [Backend("pytorch", torch_runner(model, "cpu"), files.weights, "cpu")]
    skipped: dict[str, str] = {}
    if cuda:
        cuda_run = torch_runner(model, "cuda")
        found.append(Backend("pytorch-cuda", cuda_run, files.weights, "cuda", sync=torch.cuda.synchronize))
    for precision, path in files.onnx.items():
        variant = export.variants.get(precision) if export else None
        if variant is not None and not variant.usable and variant.gate is not None:
            g = variant.gate  # a variant its gate rejected is not a backend
            skipped[f"onnxruntime-{precision}"] = (
                f"rejected by its gate (top-1 drop {g.top1_drop:+.4f}, agreement {g.agreement:.4f} on "
                f"{g.images} images; reports/export.json)"
            )
            continue
        if not path.exists():
            skipped[f"onnxruntime-{precision}"] = (
                f"{path} not found (not in export.precisions, or `lio export` not run)"
            )
            continue
        found.append(onnx_backend(f"onnxruntime-{precision}", path, "cuda" if cuda else "cpu"))
    if runtime is not None and runtime.shipped.runtime != "onnxruntime":
        shipped = runtime.shipped
        try:
            found.append(candidate(shipped.name).open(Path(shipped.graph)))
        except RuntimeUnavailable as e:
            skipped[shipped.name] = str(e)
    if engine is not None and engine.built and engine.gpu is not None:
        try:
            runner = EngineRunner(files.engine, files.engine_info)
            found.append(Backend(f"tensorrt-{engine.precision}", runner, files.engine, engine.gpu.name))
        except EngineError as e:
            skipped["tensorrt"] = str(e)
    else:
        skipped["tensorrt"] = (engine.reason or "not built") if engine else f"{files.engine_info} not found"
    return found, skipped


def score(files: ScoreFiles, batch: int, warmup: int, iters: int, throughput_iters: int) -> Scores:
    """Score every backend, time it (`iters` calls at batch 1 after `warmup`, `throughput_iters` at
    `batch`); write scores.json and the metrics and plot files."""
    rows, classes = read_manifest(require(files.prepared, "prepare"))
    model, meta = load_deployable(require(files.weights, "strip"))
    preset = eval_preset(meta.preprocess)
    test = [r for r in rows if r.split == "test"]
    labels = np.array([r.label for r in test])
    export = ExportReport.load(files.export_report) if files.export_report.exists() else None
    engine = EngineInfo.load(files.engine_info) if files.engine_info.exists() else None
    runtime = RuntimeChoice.load(files.runtime) if files.runtime.exists() else None
    found, skipped = backends(model, files, torch.cuda.is_available(), export, engine, runtime)
    sample = next(batches(test, preset, batch)).numpy()
    big = np.resize(sample, (batch, *sample.shape[1:]))  # the engine's largest batch, for throughput
    print(f"scoring {', '.join(b.name for b in found)} on {len(test)} test images")
    scored = logits_over({b.name: b.run for b in found}, test, preset, batch)
    table = []
    for b in tqdm(found, desc="timing the backends", unit="backend"):
        logits = scored[b.name]
        top, hits = accuracy(logits, labels), int((logits.argmax(1) == labels).sum())
        table.append(
            BackendScore(
                backend=b.name,
                device=b.device,
                top1=top["top1"],
                top1_ci95=wilson(hits, len(labels)),
                top5=top["top5"],
                agreement=agreement(logits, scored["pytorch"]),
                **asdict(latency(b.run, sample[:1], warmup, iters, b.sync)),
                throughput=throughput(b.run, big, throughput_iters, b.sync),
                size_mb=Path(b.file).stat().st_size / 2**20,
            )
        )

    deployed = per_class_backend(list(scored))  # per-class results come from what ships
    predicted = scored[deployed].argmax(1)
    result = Scores(
        test_images=len(test),
        latency_batch=1,
        latency_calls=iters,
        throughput_batch=batch,
        backends=table,
        skipped=skipped,
        deployed=deployed,
        per_class=per_class(predicted, labels, classes),
        confusions=confusions(predicted, labels, classes),
        recommendations=recommend(table, export, engine, runtime) if export is not None else [],
    )
    result.save(files.scores)
    write_dvc_files(files, result, [(classes[a], classes[p]) for a, p in zip(labels.tolist(), predicted.tolist())])
    return result


def write_dvc_files(files: ScoreFiles, result: Scores, pairs: list[tuple[str, str]]) -> None:
    """DVC's metrics and plot files: every backend's numbers, latency, per class, (actual, predicted) per image."""
    table = result.backends
    write_json(
        files.metrics,
        {"test_top1": table[0].top1, "backends": {r.backend: asdict(r) for r in table}, "skipped": result.skipped},
    )
    write_json(files.latency, [{"backend": r.backend, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms} for r in table])
    write_json(files.per_class, {"backend": result.deployed, "classes": [asdict(c) for c in result.per_class]})
    write_json(files.confusion, [{"actual": a, "predicted": p} for a, p in pairs])


def per_class(predicted: np.ndarray, labels: np.ndarray, classes: list[str]) -> list[ClassScore]:
    """Per class: test images, top-1, and the class it is most often mistaken for."""
    rows = []
    for k, name in enumerate(classes):
        mine = labels == k
        wrong = predicted[mine & (predicted != k)]
        confused = np.bincount(wrong, minlength=len(classes)) if len(wrong) else None
        rows.append(
            ClassScore(
                name=name,
                images=int(mine.sum()),
                top1=float((predicted[mine] == k).mean()) if mine.any() else None,
                most_confused_with=classes[int(confused.argmax())] if confused is not None else None,
            )
        )
    return rows


def confusions(predicted: np.ndarray, labels: np.ndarray, classes: list[str], top: int = 5) -> list[Confusion]:
    """The most frequent (actual, predicted) mistakes, most frequent first."""
    pairs: dict[tuple[int, int], int] = {}
    for a, p in zip(labels.tolist(), predicted.tolist()):
        if a != p:
            pairs[(a, p)] = pairs.get((a, p), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [Confusion(classes[a], classes[p], n) for (a, p), n in ranked]
