"""The study's statistics: per arm, top-1 over seeds and the paired difference to the baseline
(same seed: same data, same initialisation) with its 95% t-interval; whether the runs converged;
and the choice of the default, on validation only."""

from __future__ import annotations

import math
import statistics

from scipy import stats

from pipeline.artifacts.extent import StageExtent
from pipeline.artifacts.study import ArmSummary, Choice, Convergence, Paired, StudyRun
from pipeline.study.presets import ARMS, CANDIDATES, REFERENCES


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired(values: dict[int, float], baseline: dict[int, float]) -> Paired:
    """Per-seed differences to the baseline, their mean, sample std, 95% t-interval and win count."""
    diffs = {seed: v - baseline[seed] for seed, v in sorted(values.items()) if seed in baseline}
    mean, std = _mean_std(list(diffs.values()))
    ci = None
    if mean is not None and std is not None:
        half = stats.t.ppf(0.975, len(diffs) - 1) * std / math.sqrt(len(diffs))
        ci = (mean - half, mean + half)
    per_seed = {str(seed): d for seed, d in diffs.items()}
    return Paired(per_seed, mean, std, ci, sum(d > 0 for d in diffs.values()), len(diffs))


def seeds_for(half_width: float, std: float, n: int = 2) -> int:
    """Paired seeds whose 95% t-interval would be at most +-`half_width` at this spread of the differences."""
    while stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) > half_width:
        n += 1
    return n


def last_fifth_gain(curve: list[float]) -> float:
    """Validation top-1 the last fifth of the epochs added over the best before it (0: none)."""
    cut = max(1, round(0.8 * len(curve)))
    return max(curve) - max(curve[:cut])


def convergence(runs: list[StudyRun]) -> Convergence | None:
    """Best validation epoch before the last fifth of the schedule, the last epoch's training top-1,
    and the validation the last fifth added (runs whose curve is recorded)."""
    known = [r for r in runs if r.epochs and r.best_epoch and r.train_top1_last is not None]
    if not known:
        return None
    last = [r.train_top1_last for r in known if r.train_top1_last is not None]
    early = sum(r.best_epoch <= 0.8 * r.epochs for r in known if r.best_epoch and r.epochs)
    gains = [last_fifth_gain(r.val_curve) for r in known if r.val_curve]
    return Convergence(
        len(known),
        early,
        statistics.fmean(last),
        min(last),
        len(gains),
        statistics.fmean(gains) if gains else None,
        max(gains) if gains else None,
    )


def _localisation(runs: list[StudyRun]) -> dict[str, StageExtent]:
    stages = sorted({s for r in runs for s in r.localisation})
    return {s: StageExtent.mean([r.localisation[s] for r in runs if s in r.localisation]) for s in stages}


def aggregate(runs: list[StudyRun]) -> dict[str, ArmSummary]:
    """Per arm: top-1 mean/std over seeds, the paired difference to the baseline (same seed)
    on test and on validation with 95% t-intervals, localisation means per stage, training time."""
    by_arm = {v: [r for r in runs if r.arm == v] for v in ARMS}
    test = {v: {r.seed: r.test_top1 for r in mine} for v, mine in by_arm.items()}
    val = {v: {r.seed: r.best_val_top1 for r in mine if r.best_val_top1 is not None} for v, mine in by_arm.items()}
    out = {}
    for arm, mine in by_arm.items():
        if not mine:
            continue
        mean, std = _mean_std([r.test_top1 for r in mine])
        reference = REFERENCES.get(arm)
        out[arm] = ArmSummary(
            seeds=sorted(r.seed for r in mine),
            test_top1_mean=mean,
            test_top1_std=std,
            val_top1_mean=_mean_std(list(val[arm].values()))[0],
            test_vs_baseline=paired(test[arm], test["baseline"]),
            val_vs_baseline=paired(val[arm], val["baseline"]),
            train_seconds_min=min((r.train_seconds for r in mine if r.train_seconds), default=None),
            localisation=_localisation(mine),
            reference=reference,
            test_vs_reference=paired(test[arm], test[reference]) if reference else None,
            convergence=convergence(mine),
        )
    return out


def choice(runs: list[StudyRun]) -> Choice | None:
    """The default by the study's rule: the candidate with the best mean validation top-1 over
    the seeds every candidate ran. Means over different seeds are not comparable (one arm's
    validation top-1 spans 0.63 to 0.97 across seeds of the cpu preset); test never chooses."""
    val = {v: {r.seed: r.best_val_top1 for r in runs if r.arm == v and r.best_val_top1 is not None} for v in CANDIDATES}
    val = {v: seeds for v, seeds in val.items() if seeds}
    shared = sorted(set.intersection(*(set(seeds) for seeds in val.values()))) if val else []
    if not shared:
        return None
    means = {v: statistics.fmean(seeds[s] for s in shared) for v, seeds in val.items()}
    return Choice(shared, means, max(means, key=lambda v: means[v]))


#: the smallest of LIO's multi-stage gains over ResNet-50 in the paper's Table 1 (Stanford Cars, 92.7 -> 94.5;
#: CUB +2.5, Aircraft +2.4): an interval whose top lies below it rules out a gain of the paper's size
PAPER_GAIN = 0.018


def verdict(v: ArmSummary) -> str:
    """One sentence: does the 95% interval of the paired test difference exclude zero, and does it
    leave room for a gain of the paper's size?"""
    ci = v.test_vs_baseline.ci95
    if ci is None:
        return "fewer than two paired seeds: no interval"
    if ci[0] > 0:
        return "the interval lies above zero: better than the baseline"
    if ci[1] < 0:
        return "the interval lies below zero: worse than the baseline"
    if ci[1] < PAPER_GAIN:
        return (
            f"the interval includes zero and lies below +{PAPER_GAIN}: no difference shown, no gain of the paper's size"
        )
    return "the interval includes zero: no difference shown"
