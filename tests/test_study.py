"""The study command: its grid, and the aggregation of `dvc exp show --json` (the DVC part
runs for real in tests/test_pipeline.py; here the aggregation is checked by hand)."""

import pytest

from pipeline.study import VARIANTS, StudyError, aggregate, grid, markdown, records


def test_grid_has_every_variant_at_the_same_budget():
    runs = grid("cpu", seeds=3, other_seeds=2)
    names = [n for n, _ in runs]
    assert len(runs) == 3 * 3 + 2 * 3 and len(set(names)) == len(names)
    assert names[: len(VARIANTS)] == [
        f"study-cpu-{v}-s0" for v in VARIANTS
    ]  # seed-major: a study cut short stays paired
    budgets = {tuple(o for o in overrides if not o.startswith(("seed=", "lio."))) for _, overrides in runs}
    assert len(budgets) == 1  # epochs, images, resolution: identical for every run
    assert ("study-cpu-baseline-s2", ["seed=2", *next(iter(budgets)), "lio.stages=[]"]) in runs
    with pytest.raises(StudyError, match="unknown study preset"):
        grid("tpu", 1, 1)
    assert [n for n, _ in grid("cpu", 2, 1, ["lio-gm"])] == ["study-cpu-lio-gm-s0"]
    with pytest.raises(StudyError, match="unknown variant"):
        grid("cpu", 1, 1, ["lio-v2"])


def exp(name, top1, loc=None, seconds=100.0):
    metrics = {
        "dvclive/metrics.json": {
            "data": {"test": {"top1": top1}, "best": {"val_top1": top1, "epoch": 3}, "train_seconds": seconds}
        }
    }
    if loc is not None:
        metrics["reports/metrics.json"] = {"data": {"localisation": loc}}
    return {"revs": [{"rev": "abc", "name": name, "data": {"params": {}, "metrics": metrics}}]}


def test_aggregate_pairs_seeds_with_the_baseline():
    shown = [
        {"rev": "workspace", "name": None, "data": {"params": {}, "metrics": {}}},
        {
            "rev": "sha",
            "name": "main",
            "experiments": [
                exp("study-cpu-baseline-s0", 0.80),
                exp("study-cpu-baseline-s1", 0.70),
                exp("study-cpu-lio-s0", 0.85, {"layer2": {"iou m'": 0.3}}),
                exp("study-cpu-lio-s1", 0.72, {"layer2": {"iou m'": 0.5}}),
                exp("study-gpu-lio-s0", 0.99),
                exp("other-experiment", 0.1),
                exp("study-cpu-lio-alpha0.01-s0", 0.5),
                {"revs": [{"name": "study-cpu-lio-s2", "data": {"params": {}, "metrics": {}}}]},
            ],
        },
    ]
    runs = records(shown, "cpu")
    assert [r["name"] for r in runs] == [
        "study-cpu-baseline-s0",
        "study-cpu-baseline-s1",
        "study-cpu-lio-s0",
        "study-cpu-lio-s1",
        "study-cpu-lio-alpha0.01-s0",
    ]  # other presets, names and unfinished runs left out
    v = aggregate(runs)
    assert v["lio"]["test_top1_mean"] == pytest.approx(0.785)
    assert v["lio"]["diff_vs_baseline_per_seed"] == {0: pytest.approx(0.05), 1: pytest.approx(0.02)}
    assert v["lio"]["diff_vs_baseline_mean"] == pytest.approx(0.035)
    assert v["lio"]["test_top1_std"] == pytest.approx(0.0919, abs=1e-4)
    assert v["lio"]["localisation"]["layer2"]["iou m'"] == pytest.approx(0.4)
    text = markdown("cpu", runs, v, "lio study queue", "a test machine")
    assert "| lio | 2 | 0.785 |" in text and "s0: +0.050, s1: +0.020" in text and "| lio | layer2 |" in text
