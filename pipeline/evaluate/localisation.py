"""Localisation evidence: how well the N x N maps of a trained LIO model find the object.

A map is scored as docs/method.md ("Localisation evidence") fixes: upsampled to the mask
size, min-max normalised per image (a constant map counts as all-on), thresholded, IoU
with the true mask. The same score is given to reference maps at the same N, so a number
can be read: all-ones, a centre prior (a centred disc with the mean object area of the
training masks), a seeded random map, and the ceiling (the true mask pooled to N x N, the
best any N x N map can do). Pointing accuracy asks whether the argmax cell of the map SCL
uses (m', or M when OEL is off) lies on the object, beside its chance rate.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from pipeline.artifacts.extent import MAPS, StageExtent
from pipeline.data.dataset import load_pair
from pipeline.data.manifest import Record
from pipeline.lio.model import StageMaps
from pipeline.lio.sampler import GroupBatchSampler, group_positives

REFERENCES = ("all-ones", "centre prior", "random", "ceiling")
POINTING, CHANCE = "pointing", "pointing chance"  # per-image keys beside the maps' names
__all__ = ["MAPS", "REFERENCES", "evaluate_maps"]


def unit(maps: Tensor) -> Tensor:
    """Min-max normalise each [.., H, W] map to [0, 1]; a constant map becomes all ones."""
    lo, hi = maps.amin(dim=(-2, -1), keepdim=True), maps.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (maps - lo) / span.clamp_min(1e-12), torch.ones_like(maps))


def upsample(maps: Tensor, size: int) -> Tensor:
    """[B, N, N] cell maps -> [B, size, size] in [0, 1] (bilinear, then min-max per image)."""
    return unit(F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0])


def iou(maps: Tensor, masks: Tensor, threshold: float) -> Tensor:
    """IoU per image of the upsampled, normalised, thresholded maps [B, N, N] with masks [B, H, W]."""
    pred = upsample(maps, masks.shape[-1]) > threshold
    masks = masks.bool()
    inter = (pred & masks).flatten(1).sum(1).float()
    union = (pred | masks).flatten(1).sum(1).float().clamp_min(1)
    return inter / union


def pooled(masks: Tensor, n: int) -> Tensor:
    """True masks [B, H, W] average-pooled to [B, n, n]: the share of each cell on the object."""
    return F.adaptive_avg_pool2d(masks.float()[:, None], n)[:, 0]


def centre_disc(size: int, area: float) -> Tensor:
    """A centred disc covering `area` (a fraction) of a size x size image, as a bool map."""
    radius = math.sqrt(max(area, 0.0) / math.pi) * size
    grid = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius**2


def reference_maps(masks: Tensor, n: int, area: float, seed: int) -> dict[str, Tensor]:
    """The reference predictors at N x N for masks [B, H, W]."""
    b, size = masks.shape[0], masks.shape[-1]
    disc = pooled(centre_disc(size, area)[None], n).expand(b, n, n)
    g = torch.Generator().manual_seed(seed)
    return {
        "all-ones": torch.ones(b, n, n),
        "centre prior": disc,
        "random": torch.rand(b, n, n, generator=g),
        "ceiling": pooled(masks, n),
    }


def pointing(maps: Tensor, masks: Tensor) -> Tensor:
    """Per image, whether the argmax cell of maps [B, N, N] lies on the object (pooled mask > 0)."""
    n = maps.shape[-1]
    cell = maps.flatten(1).argmax(1)
    return pooled(masks, n).flatten(1).gather(1, cell[:, None])[:, 0] > 0


def pointing_chance(masks: Tensor, n: int) -> Tensor:
    """Per image, the share of N x N cells on the object: pointing's rate for a random cell."""
    return (pooled(masks, n) > 0).flatten(1).float().mean(1)


def mean_area(rows: list[Record], transform, limit: int = 512, seed: int = 0) -> float:
    """Mean object share of the image over (at most `limit`, seeded) rows' transformed masks."""
    if not rows:
        return 0.0
    pick = np.random.default_rng(seed).permutation(len(rows))[:limit]
    return float(np.mean([load_pair(rows[i], transform)[1].float().mean().item() for i in pick]))


def score_stage(maps: StageMaps, masks: Tensor, threshold: float, area: float, seed: int) -> dict[str, Tensor]:
    """Per image of one batch: the IoU of each trained and reference map, pointing and its chance."""
    n = maps.M.shape[-1]
    named = maps.named() | reference_maps(masks, n, area, seed)
    scores = {name: iou(m, masks, threshold) for name, m in named.items()}
    return scores | {POINTING: pointing(maps.reference, masks).float(), CHANCE: pointing_chance(masks, n)}


@torch.no_grad()
def evaluate_maps(
    model, rows: list[Record], transform, P: int, threshold: float, area: float, seed: int, batch_groups: int = 8
) -> dict[str, StageExtent]:
    """Per stage: mean IoU of m', M and each reference, pointing accuracy and its chance.

    Test images are grouped by class in groups of P+1 (each image is an anchor once, its
    positives the other members of its group), as in training, so M can be computed.
    """
    sampler = GroupBatchSampler([r.label for r in rows], P, batch_groups, seed)
    per_image: dict[str, dict[str, list[Tensor]]] = {s: {} for s in model.stages}
    cells: dict[str, int] = {}
    done: set[int] = set()
    for batch in tqdm(list(sampler), desc="localisation", unit="batch", leave=False):
        pairs = [load_pair(rows[i], transform) for i in batch]
        images, masks = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
        keep = torch.tensor([i not in done for i in batch])  # groups topped up from their class repeat images
        done.update(batch)
        for s, maps in model.extent_maps(images, group_positives(len(batch) // (P + 1), P)).items():
            cells[s] = maps.M.shape[-1]
            for key, v in score_stage(maps, masks, threshold, area, seed + len(done)).items():
                per_image[s].setdefault(key, []).append(v[keep])
    means = {s: {k: float(torch.cat(v).mean()) for k, v in d.items()} for s, d in per_image.items()}
    return {
        s: StageExtent(
            cells=cells[s],
            images=len(done),
            iou={m: d[m] for m in MAPS if m in d},
            pointing=d[POINTING],
            pointing_chance=d[CHANCE],
        )
        for s, d in means.items()
    }
