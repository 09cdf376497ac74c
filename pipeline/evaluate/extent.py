"""The localise stage: the trained heads' maps (models/lio.pt) against the true masks, beside
reference maps (pipeline.evaluate.localisation), and reports/masks.png, which every run writes
(a baseline's shows the images and masks alone). Reads the trained model, not the deployable,
so it reruns when training does and never when an export or a timing setting changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.artifacts.extent import Extent
from pipeline.core.io import atomic_path, md5, write_json
from pipeline.core.paths import require
from pipeline.data.dataset import load_image, load_pair
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.evaluate.figures import extent_figure
from pipeline.evaluate.localisation import evaluate_maps, iou, mean_area
from pipeline.lio.checkpoint import TrainedModel
from pipeline.lio.sampler import group_positives


@dataclass(frozen=True)
class ExtentFiles:
    prepared: Path
    trained: Path
    extent: Path  # reports/extent.json (the renderer's input, a DVC metric)
    plot: Path  # reports/localisation.json (DVC plot rows)
    masks: Path  # reports/masks.png


def localise(files: ExtentFiles, mask_images: int, threshold: float, seed: int) -> Extent:
    """Per LIO stage: IoU of m' and M (thresholded at `threshold`) beside the reference predictors,
    pointing accuracy, on the test images with true masks; the figure of `mask_images` rows."""
    trained, model = TrainedModel.load(require(files.trained, "train"))
    rows, _ = read_manifest(require(files.prepared, "prepare"))
    preset = eval_preset(trained.preprocess)
    P = trained.training.lio.P
    test = [r for r in rows if r.split == "test"]
    masked = [r for r in test if r.mask]
    draw_masks(mask_images, seed, files.masks, model, masked or test, preset, P, threshold, bool(masked))
    result = Extent(stages={}, model_md5=md5(files.trained))
    if model.stages and masked:
        train_masks = [r for r in rows if r.split == "train" and r.mask]
        area = mean_area(train_masks, preset, seed=seed)
        stages = evaluate_maps(model, masked, preset, P, threshold, area, seed)
        result = Extent(stages=stages, train_mask_area=area, threshold=threshold, model_md5=result.model_md5)
    result.save(files.extent)
    plot = [{"map": f"{s} {name}", "iou": v} for s, d in result.stages.items() for name, v in d.iou.items()]
    write_json(files.plot, plot)
    return result


def draw_masks(
    count: int, seed: int, out: Path, model, test: list[Record], preset, P: int, threshold: float, with_masks: bool
) -> None:
    """One test image per class (round robin), each with P positives of its class."""
    by_class: dict[int, list[Record]] = {}
    for r in test:
        by_class.setdefault(r.label, []).append(r)
    classes = sorted(by_class)
    chosen = [
        by_class[classes[i % len(classes)]][i // len(classes)]
        for i in range(count)
        if i // len(classes) < len(by_class[classes[i % len(classes)]])
    ]
    rng = np.random.default_rng(seed)
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    for r in chosen:
        pool = [q for q in by_class[r.label] if q is not r] or [r]
        group = [r] + [pool[i] for i in rng.choice(len(pool), P, replace=len(pool) < P)]
        if with_masks:
            pairs = [load_pair(q, preset) for q in group]
            images += [p[0] for p in pairs]
            masks.append(pairs[0][1])
        else:
            images += [preset(load_image(q.path, q.crop_bottom)) for q in group]
    maps = model.extent_maps(torch.stack(images), group_positives(len(chosen), P))
    anchors = slice(0, len(images), P + 1)
    true = torch.stack([m for m in masks if m is not None]) if with_masks else None
    columns = {f"{name} {s}": m[anchors] for s, d in maps.items() for name, m in d.named().items()}
    ious = {title: iou(m, true, threshold) for title, m in columns.items()} if true is not None else {}
    with atomic_path(out) as tmp:
        extent_figure(tmp, torch.stack(images)[anchors], columns, true, ious)
