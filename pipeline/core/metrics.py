"""Classification metrics shared by training, export and the report (one definition each)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import binomtest


def accuracy(logits, labels, topk: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """{"top1": .., "top5": ..} of logits [B, K] (numpy or torch) against labels [B]."""
    logits, labels = np.asarray(logits, dtype=np.float32), np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    out = {}
    for k in topk:
        hit = (order[:, : min(k, logits.shape[1])] == labels[:, None]).any(1)
        out[f"top{k}"] = float(hit.mean()) if len(labels) else 0.0
    return out


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (scipy's; sound at 0 and at n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


def paired_drop_ci(lost: int, gained: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% interval of a paired drop (lost - gained) / n: `lost` images only the reference got
    right, `gained` images only the other got right (normal approximation for paired proportions).

    Never zero-width: when no image changed class, where the normal approximation collapses to a
    point, the drop is bounded by the exact (Clopper-Pearson) 95% upper bound of the share of images
    that change, which 0 of n does not make 0 (about 3.7 / n)."""
    if n == 0:
        return (-1.0, 1.0)
    d = (lost - gained) / n
    half = z * math.sqrt(max(lost + gained - (lost - gained) ** 2 / n, 0.0)) / n
    if half == 0:
        bound = float(binomtest(lost + gained, n).proportion_ci(confidence_level=0.95, method="exact").high)
        return (max(-1.0, d - bound), min(1.0, d + bound))
    return (d - half, d + half)


def images_needed(tolerance: float) -> int:
    """Images a gate needs to decide: one image may be worth at most a fifth of its tolerance (a
    tolerance of 0 asks for no change at all, which any count decides)."""
    return math.ceil(5 / tolerance - 1e-9) if tolerance > 0 else 1


def agreement(logits, reference) -> float:
    """Share of images where two models' top-1 classes agree."""
    return float((np.asarray(logits).argmax(1) == np.asarray(reference).argmax(1)).mean())
