"""Report helpers: accuracy, per-class results, latency statistics, the Markdown table."""

import numpy as np

from pipeline.evaluate.metrics import accuracy, confusions, per_class
from pipeline.evaluate.report import _study_line, markdown_table
from pipeline.evaluate.timing import latency


def test_accuracy_top1_top5():
    logits = np.array([[0.1, 0.9, 0.0, 0, 0, 0], [0.8, 0.1, 0.05, 0.04, 0.03, 0.02]])
    got = accuracy(logits, np.array([1, 5]))
    assert got == {"top1": 0.5, "top5": 0.5}  # label 5 is the 6th-best of image 2


def test_per_class_and_confusions_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    rows = per_class(predicted, labels, ["a", "b", "c"])
    assert [r["top1"] for r in rows] == [1 / 3, 1.0, 0.0]
    assert rows[0]["most_confused_with"] == "b" and rows[1]["most_confused_with"] is None
    assert confusions(predicted, labels, ["a", "b", "c"]) == [
        {"actual": "a", "predicted": "b", "images": 2},
        {"actual": "c", "predicted": "a", "images": 1},
    ]


def test_latency_percentiles_are_ordered():
    stats = latency(lambda x: sum(range(2000)), None, warmup=1, iters=20)
    assert 0 < stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]


def test_markdown_table():
    text = markdown_table([{"a": "x", "b": 0.12345}, {"a": "y"}], [("a", "A", ""), ("b", "B", ".2f")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| x | 0.12 |", "| y | n/a |"]


def test_model_card_quotes_the_study_and_its_choice(tmp_path, monkeypatch):
    """The card quotes LIO's interval and, when the study chose another variant as the default, that one's."""
    import json

    def variant(mean, lo, hi, n, wins):
        return {"test_vs_baseline": {"mean": mean, "ci95": [lo, hi], "n": n, "wins": wins}}

    monkeypatch.chdir(tmp_path)
    assert _study_line() == "no study recorded (`lio study`)."
    study = {
        "presets": {
            "cpu": {
                "variants": {
                    "lio": variant(-0.024, -0.097, 0.048, 8, 4),
                    "lio-binary": variant(-0.01, -0.18, 0.16, 3, 2),
                },
                "choice": {"best": "lio-binary"},
            },
            "transfer": {"variants": {"lio": variant(0.0, -0.007, 0.007, 8, 3)}, "choice": {"best": "lio"}},
        }
    }
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/study.json").write_text(json.dumps(study))
    line = _study_line()
    assert "cpu preset: LIO vs baseline -0.024 test top-1, 95% CI [-0.097, +0.048] over 8 paired seeds" in line
    assert "cpu preset: lio-binary (its choice by validation) vs baseline -0.010" in line
    assert line.count("transfer preset") == 1 and "transfer preset: LIO (its choice by validation)" in line
