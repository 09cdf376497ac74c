"""The CPU runtime choice (pipeline/serve): every candidate gated by the export's rule and timed, the
fastest that passed chosen, OpenVINO's absence a recorded reason, and the INT8 graphs described from
their own nodes."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from pipeline.artifacts.export import ExportReport
from pipeline.artifacts.runtime import CpuCandidate, RuntimeChoice
from pipeline.config.export import Gate
from pipeline.core import paths
from pipeline.core.machine import cpu
from pipeline.data.dataset import run_batches
from pipeline.deploy.quantize import layer_precision
from pipeline.evaluate.runtimes import runtime_lines
from pipeline.serve import runtimes
from pipeline.serve.candidates import CANDIDATES
from pipeline.serve.choose import choose, pick
from tests.conftest import tiny_config


def _choose(root: Path) -> RuntimeChoice:
    cfg = tiny_config()
    return choose(
        {p: root / f for p, f in paths.ONNX.items()},
        ExportReport.load(root / paths.EXPORT_REPORT),
        root / paths.PREPARED,
        cfg.export.gates,
        cfg.export.calib_images,
        cfg.seed,
        cfg.engine.max_batch,
        (1, 3, 1),
    )


@pytest.fixture(scope="module")
def chosen(exported) -> RuntimeChoice:
    pytest.importorskip("openvino")
    return _choose(exported)


def test_every_candidate_is_gated_and_timed(chosen):
    names = [c.name for c in chosen.candidates]
    assert names == [c.name for c in CANDIDATES]
    for c in chosen.candidates:
        assert c.status in ("reference", "passed", "rejected"), c.reason
        assert (c.gate is None) == (c.status == "reference")
        assert c.throughput and c.throughput > 0 and c.p50_ms and c.p50_ms > 0
        if c.gate is not None:  # the export's rule, on the export's gate images
            assert c.gate.passed == Gate(c.gate.min_top1_ratio, c.gate.min_agreement).accepts(
                c.gate.top1, c.gate.top1_fp32, c.gate.agreement
            )
    openvino = chosen.candidate("openvino-bf16")
    assert openvino.device and openvino.device.startswith("OpenVINO")
    assert chosen.made_on(*cpu()) and chosen.threads >= 1


def test_the_choice_is_the_fastest_usable_candidate(chosen):
    usable = [c for c in chosen.candidates if c.usable]
    assert chosen.chosen == max(usable, key=lambda c: c.throughput or 0).name
    text = "\n".join(runtime_lines(chosen))
    assert f"Chosen: **{chosen.chosen}**" in text and chosen.cpu in text


def _candidate(name: str, status: str, img_s: float) -> CpuCandidate:
    return CpuCandidate(name, "openvino", "int8", "g.onnx", None, status, throughput=img_s, p50_ms=1.0)  # type: ignore[arg-type]


def test_pick_skips_a_faster_candidate_that_failed_its_gate():
    measured = [
        _candidate("onnxruntime-fp32", "reference", 100),
        _candidate("openvino-int8", "rejected", 900),
        _candidate("onnxruntime-int8_cpu", "passed", 400),
        _candidate("openvino-bf16", "unavailable", 0),
    ]
    name, why = pick(measured, 32)
    assert name == "onnxruntime-int8_cpu" and "openvino-int8 ran faster and failed" in why
    assert pick([measured[0], measured[1]], 32)[0] == "onnxruntime-fp32"


def test_without_openvino_onnx_runtime_is_chosen_and_the_reason_recorded(chosen, exported, monkeypatch):
    from pipeline.serve.choose import measure

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, as when absent
    onnx = {p: exported / f for p, f in paths.ONNX.items()}
    export = ExportReport.load(exported / paths.EXPORT_REPORT)
    measured = [
        measure(c, onnx, export, None, None, (1, 1, 1)) if c.runtime == "openvino" else chosen.candidate(c.name)  # type: ignore[arg-type]
        for c in CANDIDATES
    ]
    for c in measured[2:]:
        assert c.status == "unavailable" and c.reason and "OpenVINO is not installed" in c.reason
    name, _ = pick(measured, 8)
    assert name.startswith("onnxruntime-")


def test_an_unreadable_graph_is_unavailable_not_a_failure(tmp_path):
    pytest.importorskip("openvino")
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(runtimes.RuntimeUnavailable, match="OpenVINO cannot run"):
        runtimes.openvino("openvino-int8", bad)


def test_openvino_matches_onnx_runtime_on_the_qdq_graph_within_the_gate(exported):
    pytest.importorskip("openvino")
    from pipeline.data.heldout import HeldOut
    from pipeline.data.manifest import read_manifest
    from pipeline.data.transforms import eval_preset
    from pipeline.deploy.onnx_runtime import read_meta

    graph = exported / paths.ONNX["int8"]
    rows, _ = read_manifest(exported / paths.PREPARED)
    sets = HeldOut.of(rows, 8, 0).decode(eval_preset(read_meta(graph).preprocess))
    ours = run_batches(runtimes.openvino("ov", graph).run, sets.gate.pixels)
    theirs = run_batches(runtimes.onnxruntime("ort", graph).run, sets.gate.pixels)
    y = sets.gate.labels
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    top1, top1_ort = float((ours.argmax(1) == y).mean()), float((theirs.argmax(1) == y).mean())
    assert Gate().accepts(top1, top1_ort, agreement), (top1, top1_ort, agreement)


def test_the_int8_graphs_are_described_from_their_nodes(exported):
    """The sentence about a variant comes from its graph: removing one DequantizeLinear changes it."""
    report = ExportReport.load(exported / paths.EXPORT_REPORT)
    for precision in ("int8", "int8_cpu"):
        graph = onnx.load(str(exported / paths.ONNX[precision]))
        layers = layer_precision(graph)
        assert report.variants[precision].layers == layers
        assert layers.total == 21  # resnet18: 20 Conv and the classifier
    qdq = onnx.load(str(exported / paths.ONNX["int8"]))
    before = layer_precision(qdq)
    conv = next(n for n in qdq.graph.node if n.op_type == "Conv" and "DequantizeLinear" in _source(qdq, n))
    weight = next(n for n in qdq.graph.node if conv.input[1] in n.output)
    conv.input[1] = weight.input[0]  # the Conv now reads the INT8 weight's float source: not an INT8 layer
    after = layer_precision(qdq)
    assert after.int8 == before.int8 - 1 and conv.name in after.describe()


def _source(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    return next((n.op_type for n in model.graph.node if node.input[1] in n.output), "")


def test_the_report_row_shows_a_rejected_candidate_with_its_reason():
    fp32 = _candidate("onnxruntime-fp32", "reference", 100)
    rejected = replace(_candidate("openvino-int8", "rejected", 300), reason="missed its gate")
    choice = RuntimeChoice("cpu", [], 2, 1, 32, [fp32, rejected], "onnxruntime-fp32", "the only one")
    text = "\n".join(runtime_lines(choice))
    assert "rejected: missed its gate" in text and "3.00x" in text
    assert np.isclose(rejected.throughput or 0, 300)


def test_where_the_bundled_server_cannot_run_it_says_why_in_one_line(monkeypatch):
    """glibc older than the wheel's 2.35, or no stub for this Python: ServerUnavailable, one line each."""
    import platform

    from pipeline.serve import server

    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.31"))
    with pytest.raises(server.ServerUnavailable, match=r"needs glibc >= 2\.35, this machine has glibc 2\.31") as e:
        server.bundle()
    assert "\n" not in str(e.value)
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    if importlib.util.find_spec("pytriton") is not None:
        import pytriton  # noqa: F401  (imported before Python's version is faked)

        monkeypatch.setattr(sys, "version_info", type("V", (), {"major": 3, "minor": 99})())
        with pytest.raises(server.ServerUnavailable, match="no Python-backend stub for Python 3.99"):
            server.bundle()
