"""The study's statistics: per variant, top-1 over seeds and the paired difference to the baseline
(same seed: same data, same initialisation) with its 95% t-interval; and the choice of the
default, on validation only."""

from __future__ import annotations

import math

from scipy import stats

from pipeline.study.presets import CANDIDATES, REFERENCES, VARIANTS


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return mean, std


def paired(values: dict[int, float], baseline: dict[int, float]) -> dict:
    """Per-seed differences to the baseline, their mean, sample std, 95% t-interval and win count."""
    diffs = {seed: v - baseline[seed] for seed, v in sorted(values.items()) if seed in baseline}
    mean, std = _mean_std(list(diffs.values()))
    ci = None
    if std is not None:
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = [mean - half, mean + half]
    return {
        "per_seed": diffs,
        "mean": mean,
        "std": std,
        "ci95": ci,
        "wins": sum(d > 0 for d in diffs.values()),
        "n": len(diffs),
    }


def aggregate(runs: list[dict]) -> dict:
    """Per variant: top-1 mean/std over seeds, the paired difference to the baseline (same seed)
    on test and on validation with 95% t-intervals, localisation means per stage, training time."""
    base_test = {r["seed"]: r["test_top1"] for r in runs if r["variant"] == "baseline"}
    base_val = {r["seed"]: r["best_val_top1"] for r in runs if r["variant"] == "baseline"}
    variants = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        mean, std = _mean_std([r["test_top1"] for r in mine])
        loc: dict[str, dict[str, float | None]] = {}
        for stage in sorted({s for r in mine for s in r["localisation"]}):
            keys = sorted({k for r in mine for k in r["localisation"].get(stage, {})})
            loc[stage] = {
                k: _mean_std([r["localisation"][stage][k] for r in mine if stage in r["localisation"]])[0] for k in keys
            }
        variants[variant] = {
            "seeds": sorted(r["seed"] for r in mine),
            "test_top1_mean": mean,
            "test_top1_std": std,
            "val_top1_mean": _mean_std([r["best_val_top1"] for r in mine if r["best_val_top1"] is not None])[0],
            "test_vs_baseline": paired({r["seed"]: r["test_top1"] for r in mine}, base_test),
            "val_vs_baseline": paired(
                {r["seed"]: r["best_val_top1"] for r in mine if r["best_val_top1"] is not None}, base_val
            ),
            "train_seconds_min": min((r["train_seconds"] for r in mine if r["train_seconds"]), default=None),
            **(
                {
                    "reference": REFERENCES[variant],
                    "test_vs_reference": paired(
                        {r["seed"]: r["test_top1"] for r in mine},
                        {r["seed"]: r["test_top1"] for r in runs if r["variant"] == REFERENCES[variant]},
                    ),
                }
                if variant in REFERENCES
                else {}
            ),
            "localisation": loc,
        }
    return variants


def choice(runs: list[dict]) -> dict | None:
    """The default by the study's rule: the candidate with the best mean validation top-1 over
    the seeds every candidate ran. Means over different seeds are not comparable (one variant's
    validation top-1 spans 0.63 to 0.97 across seeds of the cpu preset); test never chooses."""
    val = {
        v: {r["seed"]: r["best_val_top1"] for r in runs if r["variant"] == v and r["best_val_top1"] is not None}
        for v in CANDIDATES
    }
    val = {v: seeds for v, seeds in val.items() if seeds}
    shared = sorted(set.intersection(*(set(seeds) for seeds in val.values()))) if val else []
    if not shared:
        return None
    means = {v: sum(seeds[s] for s in shared) / len(shared) for v, seeds in val.items()}
    return {"seeds": shared, "val_top1_mean": means, "best": max(means, key=lambda v: means[v])}


def verdict(v: dict) -> str:
    """One sentence: does the 95% interval of the paired test difference exclude zero?"""
    d = v["test_vs_baseline"]
    if d["ci95"] is None:
        return "fewer than two paired seeds: no interval"
    lo, hi = d["ci95"]
    if lo > 0:
        return "the interval lies above zero: better than the baseline"
    if hi < 0:
        return "the interval lies below zero: worse than the baseline"
    return "the interval includes zero: no difference shown"
