"""`lio report`: every backend available here on the test split -> reports/{metrics.json,
report.md, latency.json, masks.png}."""
import json
from pathlib import Path

import click
import numpy as np
import torch
from torchvision import tv_tensors

from pipeline import onnx_runtime
from pipeline.data.dataset import batches, load_image, load_mask, logits_over
from pipeline.data.prepare import read_manifest
from pipeline.data.transforms import ClassificationPresetEval
from pipeline.deploy import load_deployable
from pipeline.engine import EngineError, EngineRunner
from pipeline.io import atomic_path, write_json, write_text
from pipeline.lio import group_positives
from pipeline.report import accuracy, extent_figure, latency, markdown_table, mask_iou, throughput
from pipeline.train import load_trained
from stages.common import with_config
from stages.engine import ENGINE, INFO
from stages.export import ONNX
from stages.prepare import OUT as PREPARED
from stages.strip import deployable_path
from stages.train import OUT as TRAINED

METRICS = Path("reports/metrics.json")
MARKDOWN = Path("reports/report.md")
LATENCY = Path("reports/latency.json")
MASKS = Path("reports/masks.png")


def backends(cfg, model):
    """(name, run(np)->np, sync, file, device) for everything that runs here."""
    cuda = torch.cuda.is_available()
    found, skipped = [], {}

    def torch_backend(device):
        net = model.to(device)

        def run(x):
            with torch.no_grad():
                return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

        return run

    weights = deployable_path(cfg.model.arch)
    found.append(("pytorch", torch_backend("cpu"), lambda: None, weights, "cpu"))
    if cuda:
        found.append(("pytorch-cuda", torch_backend("cuda"), torch.cuda.synchronize, weights, "cuda"))
    for precision, path in ONNX.items():
        if path.exists():
            sess = onnx_runtime.session(path, "cuda" if cuda else "cpu")
            found.append((f"onnxruntime-{precision}", lambda x, s=sess: onnx_runtime.run(s, x), lambda: None,
                          path, onnx_runtime.provider(sess)))
    info = json.loads(INFO.read_text()) if INFO.exists() else {"built": False, "reason": f"{INFO} not found"}
    if info.get("built"):
        try:
            runner = EngineRunner(ENGINE, INFO)
            found.append((f"tensorrt-{info['precision']}", runner, lambda: None, ENGINE, info["gpu"]["name"]))
        except EngineError as e:
            skipped["tensorrt"] = str(e)
    else:
        skipped["tensorrt"] = info.get("reason", "not built")
    return found, skipped


def extent_results(cfg, rows, preset):
    """Mean IoU of thresholded m' per stage on test images with masks, and the figure."""
    model, blob = load_trained(TRAINED)
    with_masks = [r for r in rows if r["split"] == "test" and r["mask"]]
    if not model.stages or not with_masks:
        return {}

    def pair(r):
        image, mask = preset(load_image(r["path"], r["crop_bottom"]), tv_tensors.Mask(load_mask(r["mask"])))
        return image, mask[0]

    ious = {s: [] for s in model.stages}
    for start in range(0, len(with_masks), 64):
        images, masks = zip(*(pair(r) for r in with_masks[start : start + 64]))
        for s, extent in model.extents(torch.stack(images)).items():
            ious[s].append(mask_iou(extent, torch.stack(masks), cfg.report.mask_threshold))
    result = {f"iou_{s}": float(torch.cat(v).mean()) for s, v in ious.items()}
    result["iou"] = float(np.mean(list(result.values())))

    # Figure: images from different classes, each with P test positives of its class.
    P = blob["model"]["P"]
    by_class = {}
    for r in with_masks:
        by_class.setdefault(r["label"], []).append(r)
    classes = sorted(by_class)
    chosen = []
    for i in range(cfg.report.mask_images):  # round-robin over the classes
        rows_of_class = by_class[classes[i % len(classes)]]
        if i // len(classes) < len(rows_of_class):
            chosen.append(rows_of_class[i // len(classes)])
    batch, masks = [], []
    rng = np.random.default_rng(cfg.seed)
    for r in chosen:
        pool = [q for q in by_class[r["label"]] if q is not r] or [r]
        picks = [pool[i] for i in rng.choice(len(pool), P, replace=len(pool) < P)]
        image, mask = pair(r)
        batch += [image] + [pair(q)[0] for q in picks]
        masks.append(mask)
    maps = model.extent_maps(torch.stack(batch), group_positives(len(chosen), P))
    anchors = slice(0, len(batch), P + 1)
    columns = [m[anchors] for s in model.stages for m in maps[s]]  # per stage: M, then m'
    with atomic_path(MASKS) as tmp:
        extent_figure(tmp, torch.stack(batch)[anchors], columns, torch.stack(masks))
    result["figure_columns"] = "image, " + ", ".join(f"M {s}, m' {s}" for s in model.stages) + ", true mask"
    return result


@click.command("report")
@with_config
def command(cfg):
    """Accuracy, agreement, latency and size of every backend; the extent figure and IoU."""
    rows, _ = read_manifest(PREPARED)
    preset = ClassificationPresetEval(cfg.data.transforms)
    test_rows = [r for r in rows if r["split"] == "test"]
    labels = np.array([r["label"] for r in test_rows])
    model, _ = load_deployable(deployable_path(cfg.model.arch))
    found, skipped = backends(cfg, model)
    batch = cfg.engine.max_batch
    sample = next(batches(test_rows, preset, batch)).numpy()
    big = np.resize(sample, (batch, *sample.shape[1:]))  # the largest profile batch, for throughput
    click.echo(f"scoring {', '.join(b[0] for b in found)} on {len(test_rows)} test images")
    scored = logits_over({name: run for name, run, *_ in found}, test_rows, preset, batch)
    reference = scored["pytorch"].argmax(1)
    rc, table = cfg.report, []
    for name, run, sync, path, device in found:
        click.echo(f"timing {name} ({device})")
        logits = scored[name]
        table.append({"backend": name, "device": device, **accuracy(logits, labels),
                      "agreement": float((logits.argmax(1) == reference).mean()),
                      **latency(run, sample[:1], rc.warmup, rc.iters, sync),
                      "throughput": throughput(run, big, rc.throughput_iters, sync),
                      "size_mb": Path(path).stat().st_size / 2**20})
    masks = extent_results(cfg, rows, preset)
    metrics = {"test_top1": table[0]["top1"], "backends": {r["backend"]: r for r in table}, "masks": masks,
               "skipped": skipped}
    write_json(METRICS, metrics)
    write_json(LATENCY, [{"backend": r["backend"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]} for r in table])
    columns = [("backend", "backend", ""), ("device", "device / provider", ""), ("top1", "top-1", ".4f"),
               ("top5", "top-5", ".4f"), ("agreement", "top-1 agreement", ".4f"), ("p50_ms", "p50 ms", ".2f"),
               ("p90_ms", "p90 ms", ".2f"), ("p99_ms", "p99 ms", ".2f"),
               ("throughput", f"img/s @ batch {batch}", ".1f"), ("size_mb", "MiB", ".1f")]
    lines = ["# LIO report", "", f"Test split: {len(labels)} images. Latency at batch 1.", "",
             markdown_table(table, columns), ""]
    for name, why in skipped.items():
        lines.append(f"- {name}: not measured: {why}")
    if masks:
        lines += ["", "## Object extent", "", f"Mean IoU of m' > {cfg.report.mask_threshold} (min-max normalised) "
                  f"against the true masks: " + ", ".join(f"{k} {v:.3f}" for k, v in masks.items() if k.startswith("iou")),
                  "", f"![extent]({MASKS.name}) Columns: {masks['figure_columns']}."]
    write_text(MARKDOWN, "\n".join(lines) + "\n")
    click.echo("\n".join(lines))
