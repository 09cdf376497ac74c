"""Report helpers: accuracy, per-class results, latency statistics, the Markdown table."""

import numpy as np

from pipeline.evaluate.metrics import accuracy, confusions, per_class
from pipeline.evaluate.report import _study_line, markdown_table
from pipeline.evaluate.timing import latency, throughput


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


def test_latency_excludes_warm_up_and_times_the_sync():
    """A backend whose first calls are slow (warm-up) and whose work finishes only at `sync`
    (a GPU queue): warm-up stays out of the percentiles, and the sync's time is inside them."""
    import time

    calls = {"n": 0}

    def fn(x):
        calls["n"] += 1
        if calls["n"] <= 3:
            time.sleep(0.05)  # warm-up: 50 ms

    stats = latency(fn, None, warmup=3, iters=10, sync=lambda: time.sleep(0.004))
    assert calls["n"] == 13
    assert 3.5 <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] < 40  # 4 ms of sync, no 50 ms warm-up
    rate = throughput(lambda x: time.sleep(0.002), np.zeros(8), iters=5, sync=lambda: time.sleep(0.02))
    assert rate < 8 * 5 / (5 * 0.002 + 0.02) * 1.05  # the final sync (20 ms) is counted


def test_recommendations_pick_the_fastest_variant_that_passed():
    from pipeline.evaluate.report import recommendations

    def row(backend, throughput, p50=1.0, top1=0.9):
        return {
            "backend": backend,
            "device": "CPUExecutionProvider",
            "throughput": throughput,
            "p50_ms": p50,
            "top1": top1,
        }

    table = [row("onnxruntime-fp32", 100), row("onnxruntime-int8_cpu", 400, 0.5), row("onnxruntime-fp16", 900)]
    table.append({**row("onnxruntime-fp16", 5000), "device": "CUDAExecutionProvider"})  # not a CPU row
    gates = {
        "fp32": {"status": "reference", "file": "models/onnx/model.onnx"},
        "fp16": {"status": "rejected", "file": "models/onnx/model.fp16.onnx"},  # fastest, but rejected
        "int8_cpu": {"status": "passed", "file": "models/onnx/model.int8_cpu.onnx"},
    }
    engine = {"built": False, "precision": "fp16", "reason": "no TensorRT"}
    advice = recommendations(table, gates, engine)
    assert advice["CPU (ONNX Runtime)"].startswith(
        "`models/onnx/model.int8_cpu.onnx`: 400 img/s at batch 32 (4.00x FP32)"
    )
    assert "p50 0.50 ms at batch 1 (0.50x FP32)" in advice["CPU (ONNX Runtime)"]
    assert "`models/onnx/model.fp16.onnx` (fp16, its gate rejected)" in advice["GPU (TensorRT)"]
    assert "not built here: no TensorRT" in advice["GPU (TensorRT)"]
    built = {
        "built": True,
        "precision": "fp16",
        "tensorrt": "10.12",
        "gpu": {"name": "H200", "compute_capability": "9.0"},
    }
    assert recommendations([], {}, built) == {
        "GPU (TensorRT)": "`models/engine/model.engine` (fp16, TensorRT 10.12, H200, compute capability 9.0)"
    }


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
