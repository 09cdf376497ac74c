"""Measurements for the report: accuracy and latency per backend, and the extent figure.

Latency is per call at batch 1 after warm-up (percentiles), throughput at the largest
profile batch; a `sync` callable (CUDA synchronisation) is run inside the timed region
for GPU backends so that queued work is counted.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pipeline.data.transforms import MEAN, STD


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return {"top1": float((top[:, 0] == labels).mean()), "top5": float((top == labels[:, None]).any(1).mean())}


def latency(fn: Callable, x, warmup: int, iters: int, sync: Callable = lambda: None) -> dict:
    for _ in range(warmup):
        fn(x)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}


def throughput(fn: Callable, x, iters: int, sync: Callable = lambda: None) -> float:
    fn(x)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    sync()
    return len(x) * iters / (time.perf_counter() - start)


def _unit(m: Tensor) -> Tensor:
    lo, hi = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def upsample(maps: Tensor, size: int) -> Tensor:
    """[B, N, N] cell maps -> [B, size, size] in [0, 1] (bilinear, min-max per image)."""
    return _unit(F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0])


def mask_iou(extent: Tensor, masks: Tensor, threshold: float) -> Tensor:
    """IoU per image of the thresholded, upsampled extent against the true masks [B, H, W]."""
    pred = upsample(extent, masks.shape[-1]) > threshold
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float().clamp_min(1)
    return inter / union


def heat(m: Tensor) -> Tensor:
    """[B, H, W] in [0, 1] -> [B, 3, H, W], dark blue (0) to yellow (1)."""
    return torch.stack([m, m.sqrt() * 0.9, 0.5 * (1 - m)], dim=1)


def extent_figure(path, images: Tensor, columns: list[Tensor], masks: Tensor | None) -> None:
    """One row per image: the image, then each map in `columns`, then the true mask."""
    size = images.shape[-1]
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    tiles = [(images * std + mean).clamp(0, 1)] + [heat(upsample(c, size)) for c in columns]
    if masks is not None:
        tiles.append(masks[:, None].float().expand(-1, 3, -1, -1))
    grid = torch.stack(tiles, dim=1).flatten(0, 1)  # row-major: image by image
    save_image(make_grid(grid, nrow=len(tiles), padding=2, pad_value=1.0), str(path))


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
