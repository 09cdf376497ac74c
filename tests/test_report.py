"""Report helpers: accuracy, per-class results, latency statistics, the Markdown table."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.artifacts.deployable import Preprocess
from pipeline.artifacts.engine import EngineInfo, Gpu, Profile
from pipeline.artifacts.export import ExportReport, Layers, Variant
from pipeline.artifacts.runtime import CpuCandidate, RuntimeChoice
from pipeline.artifacts.scores import BackendScore, Confusion, Scores
from pipeline.core.markdown import table
from pipeline.core.metrics import accuracy, wilson
from pipeline.core.timing import latency, throughput
from pipeline.evaluate.card import study_line
from pipeline.evaluate.render import recommendations
from pipeline.evaluate.score import confusions, per_class


def test_accuracy_top1_top5():
    logits = np.array([[0.1, 0.9, 0.0, 0, 0, 0], [0.8, 0.1, 0.05, 0.04, 0.03, 0.02]])
    got = accuracy(logits, np.array([1, 5]))
    assert got == {"top1": 0.5, "top5": 0.5}  # label 5 is the 6th-best of image 2


def test_per_class_and_confusions_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 1, 0])
    rows = per_class(predicted, labels, ["a", "b", "c"])
    assert [r.top1 for r in rows] == [1 / 3, 1.0, 0.0] and [r.images for r in rows] == [3, 2, 1]
    assert rows[0].most_confused_with == "b" and rows[1].most_confused_with is None
    assert confusions(predicted, labels, ["a", "b", "c"]) == [Confusion("a", "b", 2), Confusion("c", "a", 1)]


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
    assert 3.5 <= stats.p50_ms <= stats.p90_ms < 40  # 4 ms of sync, no 50 ms warm-up
    assert stats.p99_ms is None  # 10 calls cannot mean a 99th percentile
    assert latency(lambda x: None, None, warmup=0, iters=100).p99_ms is not None
    rate = throughput(lambda x: time.sleep(0.002), np.zeros(8), iters=5, sync=lambda: time.sleep(0.02))
    assert rate < 8 * 5 / (5 * 0.002 + 0.02) * 1.05  # the final sync (20 ms) is counted


def test_wilson_interval_by_hand():
    """Wilson's 95% interval: 0 of 10 is not [0, 0], 9 of 10 is asymmetric, both by hand."""
    lo, hi = wilson(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(9, 10)
    assert lo == pytest.approx(0.5958, abs=1e-4) and hi == pytest.approx(0.9821, abs=1e-4)
    assert wilson(450, 500)[1] - wilson(450, 500)[0] < wilson(45, 50)[1] - wilson(45, 50)[0]


def _scores(rows: list[BackendScore], batch: int = 32, export=None, engine=None, runtime=None) -> Scores:
    """Scores with the recommendations pipeline/deploy/choice.py makes of these rows."""
    from pipeline.deploy.choice import recommend

    advice = recommend(rows, export, engine, runtime) if export is not None else []
    return Scores(len(rows), 1, 30, batch, rows, {}, "onnxruntime-fp32", [], [], advice)


def _row(backend, throughput, p50=1.0, top1=0.9, device="CPUExecutionProvider") -> BackendScore:
    return BackendScore(backend, device, top1, (0.8, 0.95), 1.0, 1.0, p50, p50, p50, throughput, 1.0)


def _variant(precision, status) -> Variant:
    file = "models/onnx/model.onnx" if precision == "fp32" else f"models/onnx/model.{precision}.onnx"
    return Variant(precision, file, status, 0.9)


def _engine(built: bool) -> EngineInfo:
    spec = Preprocess(72, 64, [0.5] * 3, [0.25] * 3)
    if not built:
        return EngineInfo(False, "fp16", "fp16", Profile(1, 8, 32), "x.onnx", [], spec, reason="no TensorRT")
    return EngineInfo(
        True, "fp16", "fp16", Profile(1, 8, 32), "x.onnx", [], spec, tensorrt="10.12", gpu=Gpu("H200", "9.0")
    )


def _cpu(name: str, precision: str, status: str, img_s: float, p50: float) -> CpuCandidate:
    runtime = name.split("-")[0]
    graph = "models/onnx/model.onnx" if precision == "fp32" else f"models/onnx/model.{precision}.onnx"
    return CpuCandidate(name, runtime, precision, graph, None, status, "CPU", None, p50, img_s)  # type: ignore[arg-type]


def test_recommendations_follow_the_runtime_choice_and_name_the_measured_batch():
    from pipeline.serve.choose import pick

    table = [_row("onnxruntime-fp32", 100), _row("onnxruntime-int8_cpu", 400, 0.5)]
    export = ExportReport(
        "validation",
        {p: _variant(p, s) for p, s in (("fp32", "reference"), ("fp16", "rejected"), ("int8_cpu", "passed"))},
    )
    candidates = [
        _cpu("onnxruntime-fp32", "fp32", "reference", 100, 1.0),
        _cpu("onnxruntime-int8_cpu", "int8_cpu", "passed", 400, 0.5),
        _cpu("openvino-int8", "int8", "rejected", 900, 0.2),  # faster, but its gate failed
    ]
    runtime = RuntimeChoice("Xeon", ["amx_int8"], 2, 1, 8, candidates, *pick(candidates, 8))
    advice = recommendations(_scores(table, 8, export, _engine(False), runtime))
    assert advice["CPU"].startswith("`models/onnx/model.int8_cpu.onnx`: 400 img/s at batch 8 (4.00x FP32)")
    assert "p50 0.50 ms at batch 1 (0.50x FP32)" in advice["CPU"] and "(Xeon)" in advice["CPU"]
    assert "`models/onnx/model.fp16.onnx` (fp16, its gate rejected)" in advice["GPU (TensorRT)"]
    assert "not built here: no TensorRT" in advice["GPU (TensorRT)"]
    assert recommendations(_scores([], 32, ExportReport("validation", {}), _engine(True))) == {
        "GPU (TensorRT)": "`models/engine/model.engine` (fp16, TensorRT 10.12, H200, compute capability 9.0)"
    }


def test_artifacts_round_trip_and_refuse_a_foreign_file(tmp_path):
    """What a stage saves, the next loads back equal; a file of another shape fails in one line."""
    from pipeline.core.errors import ArtifactError, MissingArtifactError

    engine = _engine(True)
    engine.save(tmp_path / "engine.json")
    assert EngineInfo.load(tmp_path / "engine.json") == engine
    (tmp_path / "bad.json").write_text('{"built": true, "precision": "fp16"}')
    with pytest.raises(
        ArtifactError, match=r"bad.json: not the EngineInfo this version writes .*rerun `dvc repro engine`"
    ):
        EngineInfo.load(tmp_path / "bad.json")
    with pytest.raises(MissingArtifactError, match="missing.json not found: run `dvc repro engine`"):
        EngineInfo.load(tmp_path / "missing.json")


def test_markdown_table():
    text = table([{"a": "x", "b": 0.12345}, {"a": "y"}], [("a", "A", ""), ("b", "B", ".2f")])
    assert text.splitlines() == ["| A | B |", "|---|---|", "| x | 0.12 |", "| y | n/a |"]


def test_model_card_quotes_the_study_and_its_choice(tmp_path):
    """The card quotes LIO's interval and, when the study chose another variant as the default, that one's."""
    from pipeline.artifacts.study import ArmSummary, Choice, Paired, PresetStudy, Setting, Study

    def variant(mean, lo, hi, n, wins):
        d = Paired({}, mean, 0.01, (lo, hi), wins, n)
        return ArmSummary(list(range(n)), 0.8, None, None, d, d, None)

    def preset(arms, best):
        return PresetStudy("p", Setting("d", []), "c", "m", arms, Choice([0], {}, best), [])

    path = tmp_path / "reports/study.json"
    assert study_line(path) == "no study recorded (`lio study`)."
    cpu = preset(
        {"lio": variant(-0.024, -0.097, 0.048, 8, 4), "lio-binary": variant(-0.01, -0.18, 0.16, 3, 2)}, "lio-binary"
    )
    Study({"cpu": cpu, "transfer": preset({"lio": variant(0.0, -0.007, 0.007, 8, 3)}, "lio")}).save(path)
    line = study_line(path)
    assert "cpu preset: LIO vs baseline -0.024 test top-1, 95% CI [-0.097, +0.048] over 8 paired seeds" in line
    assert "cpu preset: lio-binary (its choice by validation) vs baseline -0.010" in line
    assert line.count("transfer preset") == 1 and "transfer preset: LIO (its choice by validation)" in line


def test_the_report_says_by_how_much_a_rejected_variant_missed_and_what_the_fallback_kept():
    from dataclasses import replace

    from pipeline.artifacts.export import FallbackSpeed, GateResult, SelectionTry
    from pipeline.config.export import RULE, Gate
    from pipeline.evaluate.tables import gate_lines

    g = GateResult(
        passed=False,
        rule=RULE,
        min_top1_ratio=0.99,
        min_agreement=0.95,
        images=510,
        top1=0.80,
        top1_fp32=0.8359,
        top1_ratio=0.80 / 0.8359,
        top1_drop=0.0359,
        top1_drop_ci95=(0.02, 0.05),
        agreement=0.9765,
        agreement_ci95=(0.959, 0.987),
        test_top1=0.83,
        test_agreement=0.98,
        max_abs_diff_vs_fp32=1.0,
        shortfalls=Gate().shortfalls(0.80, 0.8359, 0.9765),  # as the judge records the one rule's answer
    )
    first = SelectionTry("", [], 504, 0.9623, 0.80, 0.83, 0.03, False)
    tries = [first, replace(first, kept_in_fp32=["layer4.2.conv3", "fc"], agreement=0.99, passed=True)]
    kept = ["layer4.2.conv3", "fc"]
    v = Variant("int8", "models/onnx/model.int8.onnx", "rejected", 0.83, gate=g, selection=tries, kept_in_fp32=kept)
    lines = gate_lines(ExportReport("x", {"int8": v}))
    assert lines[0].startswith(f"Rule: {RULE}; agreement with FP32 is a floor") and "MLPerf" in lines[0]
    assert (
        "| int8 | rejected | 510 | 0.8000 / 0.8359 = 0.9571 (min 0.99) | +0.0359 [+0.0200, +0.0500] | "
        "0.9765 [0.959, 0.987] (floor 0.95) | 0.8300 |" in lines
    )
    chose = (
        "chosen before the gate on 504 selection images, where the graph as first made had top-1 0.8000 against FP32's "
        "0.8300 and agreed on 0.9623 (19 changed class); 2 selection tries"
    )
    assert (
        "- int8 missed by top-1 ratio 0.0329 under its minimum (12 of 510 images changed class), with 2 layers kept "
        f"in FP32 (layer4.2.conv3, fc); {chose}." in lines
    )
    good = replace(g, passed=True, agreement=0.998, top1=0.8359, top1_ratio=1.0, top1_drop=0.0)
    v = replace(v, status="passed", gate=good, fallback_speed=FallbackSpeed(900.0, 850.0, 32))
    assert (
        f"- int8_cpu passed with 2 layers kept in FP32 (layer4.2.conv3, fc); {chose}; on this CPU at batch 32 it "
        "runs 850 img/s against 900 as first made." in gate_lines(ExportReport("x", {"int8_cpu": v}))
    )
    v = replace(v, selection=[replace(first, agreement=0.995, passed=True)], kept_in_fp32=[], fallback_speed=None)
    v = replace(v, layers=Layers(53, 54, ["node_linear (Gemm)"]))  # what the graph's nodes say (layer_precision)
    assert gate_lines(ExportReport("x", {"int8": v}))[-1].startswith(
        "- int8 passed with 53 of 54 Conv and Gemm layers in INT8, in floating point: node_linear (Gemm); chosen "
        "before the gate on 504 selection images"
    )


def test_no_renderer_compares_a_number_to_a_threshold():
    """Whether something passes is decided by `Gate.shortfalls` alone; pipeline/evaluate only formats its
    answer. A comparison against a gate's `min_*` field or a `*_ratio` there would be a second rule."""
    import ast

    for path in Path("pipeline/evaluate").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                names = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
                names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                decided = [n for n in names if n.startswith("min_") or n.endswith("_ratio")]
                assert not decided, f"{path}:{node.lineno} compares {decided}: ask Gate.shortfalls instead"
