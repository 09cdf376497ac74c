"""ONNX export parity, the ModelOpt variants in ONNX Runtime, and `lio predict`."""

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from pipeline.core.artifacts.export import ExportReport
from pipeline.deploy import onnx_runtime
from pipeline.deploy.export import check_parity, export_fp32
from pipeline.deploy.predict import predict
from pipeline.deploy.runners import load_deployable
from stages.cli import main


def test_fp32_export_is_checked_and_matches_pytorch(exported):
    report = ExportReport.load(exported / "reports/export.json")
    assert list(report.variants) == ["fp32", "fp16", "int8", "int8_cpu"] and report.fused_preprocess is not None
    assert all(report.variants[p].status == "passed" for p in ("fp16", "int8", "int8_cpu"))  # the tiny open gates
    parity = report.variants["fp32"].details["parity_vs_pytorch"]
    assert parity["passed"] and parity["same_top1"] and parity["images"] == 12
    assert parity["max_abs_diff"] <= 1e-4 * parity["largest_logit"]
    assert report.variants["fp32"].provider == "CPUExecutionProvider"
    path = exported / "models/onnx/model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    assert not (exported / "models/onnx/model.onnx.data").exists()  # one self-contained file
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert onnx_runtime.read_meta(path).classes == ["a", "b", "c"]
    # parity computed here, independently of export_all's own check: ONNX Runtime against the
    # stripped weights in a fresh torchvision model
    import torchvision

    plain = torchvision.models.resnet18(num_classes=3)
    plain.load_state_dict(torch.load(exported / "models/resnet18.pt", weights_only=True))
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = plain.eval()(torch.from_numpy(x)).numpy()
    got = onnx_runtime.run(onnx_runtime.session(path), x)
    assert np.abs(got - expected).max() <= 1e-4 * max(np.abs(expected).max(), 1.0)


def test_dynamic_batch_in_onnx_runtime(exported):
    sess = onnx_runtime.session(exported / "models/onnx/model.onnx")
    for batch in (1, 5):
        assert onnx_runtime.run(sess, np.zeros((batch, 3, 32, 32), np.float32)).shape == (batch, 3)


@pytest.mark.parametrize("precision,tensor_type", [("fp16", onnx.TensorProto.FLOAT16), ("int8", onnx.TensorProto.INT8)])
def test_precision_variants(exported, precision, tensor_type):
    report = ExportReport.load(exported / "reports/export.json").variants[precision]
    assert report.gate is not None and report.gate.test_agreement >= 0.75 and 0 <= report.test_top1 <= 1
    model = onnx.load(str(exported / f"models/onnx/model.{precision}.onnx"))
    types = {i.data_type for i in model.graph.initializer}
    types |= {a.t.data_type for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}
    zero_points = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert tensor_type in types or (precision == "int8" and zero_points)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same preprocessing for all


def test_cpu_int8_is_onnx_runtimes_own_quantization(exported):
    report = ExportReport.load(exported / "reports/export.json").variants["int8_cpu"].details
    tried = {(c["format"], c["calibration"]) for c in report["candidates"]}
    assert tried == {("QOperator", "MinMax"), ("QDQ", "MinMax")}
    fastest = max(report["candidates"], key=lambda c: c["batch32_img_s"])  # all pass the tiny config's gates
    assert (report["format"], report["calibration"]) == (fastest["format"], fastest["calibration"])
    model = onnx.load(str(exported / "models/onnx/model.int8_cpu.onnx"))
    ops = {n.op_type for n in model.graph.node}
    assert ("QLinearConv" in ops) if report["format"] == "QOperator" else ("DequantizeLinear" in ops)
    assert not list((exported / "models/onnx").glob("tmp*"))  # the other candidates are gone


def damage(source, path, meta):
    """A real, deliberately broken variant: FP32 with the classifier's weights negated."""
    model = onnx.load(str(source))
    for init in model.graph.initializer:
        if init.name.startswith("fc.weight"):
            w = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(-w, init.name))
    onnx.save(model, str(path))


def test_a_failing_gate_rejects_the_variant_and_the_engine_falls_back(exported, tmp_path, monkeypatch):
    import shutil

    import pipeline.deploy.export as export_lib
    from pipeline.config.export import ExportConfig, Gate
    from pipeline.deploy.engine import build_engine
    from tests.conftest import tiny_config

    shutil.copytree(exported / "models", tmp_path / "models")
    monkeypatch.setattr(export_lib, "export_fp16", damage)
    files = {p: tmp_path / f"models/onnx/{'model' if p == 'fp32' else 'model.' + p}.onnx" for p in ("fp32", "fp16")}
    strict = ExportConfig(precisions=["fp32", "fp16"], gates={"fp16": Gate(0.0, 0.9)})
    report = tmp_path / "reports/export.json"
    result = export_lib.export_all(
        tmp_path / "models/resnet18.pt", exported / "data/prepared", files, report, strict, seed=0
    )
    fp16 = result.variants["fp16"]
    assert fp16.status == "rejected" and not files["fp16"].exists()  # out of the deployables
    assert fp16.gate is not None and fp16.gate.agreement < 0.9 and fp16.gate.min_agreement == 0.9
    assert fp16.gate.images > 50 and fp16.gate.agreement_ci95[0] <= fp16.gate.agreement <= fp16.gate.agreement_ci95[1]
    assert ExportReport.load(report) == result
    assert "validation split" in result.decided_on and "held-out gate images" in result.decided_on

    cfg = tiny_config(**{"engine.precision": "fp16"}).engine
    engine_dir = tmp_path / "models/engine"
    info = build_engine(cfg, files, report, engine_dir / "model.engine", engine_dir / "engine.json", tmp_path / "cache")
    assert info.precision == "fp32" and "fp16 was rejected by its gate: built from fp32" in str(info.fallback)

    # the same variant passes a gate that allows it
    loose = ExportConfig(precisions=["fp32", "fp16"], gates={"fp16": Gate(1.0, 0.0)})
    result = export_lib.export_all(tmp_path / "models/resnet18.pt", exported / "data/prepared", files, report, loose, 0)
    assert result.variants["fp16"].status == "passed" and files["fp16"].exists()


def test_the_fallback_keeps_the_stem_and_leading_stages_in_fp32_and_quantizes_the_rest(exported, tmp_path):
    """The stages come from the module scopes torch's exporter writes into the graph; both
    quantizers (ModelOpt and ONNX Runtime, for real) then leave exactly those convs in FP32."""
    from pipeline.deploy.export import export_int8
    from pipeline.deploy.quantize import export_int8_cpu, stage_nodes

    fp32 = exported / "models/onnx/model.onnx"
    model = onnx.load(str(fp32))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    one, two = stage_nodes(model, 1), stage_nodes(model, 2)
    assert stage_nodes(model, 0) == [] and set(one) < set(two)
    kept = [c for c in convs if c in one]
    assert len(kept) == 1 + 4 and len([c for c in convs if c in two]) == 1 + 4 + 5  # resnet18: stem, 2x2, 2x2 + 1
    assert kept[0] == convs[0]  # the stem conv (its batch norm folded in) is the first

    calibration = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    meta = onnx_runtime.read_meta(fp32)
    source = tmp_path / "fp32.onnx"  # with no shapes inferred: ModelOpt would write them into its input
    del model.graph.value_info[:]
    onnx.save(model, str(source))
    before = source.read_bytes()
    export_int8(source, tmp_path / "int8.onnx", calibration, meta, exclude=tuple(one))
    assert source.read_bytes() == before  # the FP32 file, an output of its own, is read, never rewritten
    repaired = onnx.load(str(tmp_path / "int8.onnx")).graph
    producers = {o: n.op_type for n in repaired.node for o in n.output}
    int8_weights = {n.name for n in repaired.node if n.op_type == "Conv" and producers.get(n.input[1])}
    assert int8_weights == set(convs) - set(kept)  # exact names (ModelOpt reads them as re.match patterns)

    made = export_int8_cpu(fp32, tmp_path / "cpu", calibration, meta, (("QOperator", "MinMax"),), keep_stages=1)
    cpu = onnx.load(str(made["QOperator", "MinMax"])).graph
    assert {n.name for n in cpu.node if n.op_type == "Conv"} == set(kept)
    assert len([n for n in cpu.node if n.op_type == "QLinearConv"]) == len(convs) - len(kept)


def test_fused_preprocessing_model_takes_the_clients_uint8_crops(exported):
    from pipeline.deploy.preprocess import resize_and_crop

    report = ExportReport.load(exported / "reports/export.json").fused_preprocess
    assert report is not None and report["parity_vs_fp32"]["passed"]
    sess = onnx_runtime.session(exported / "models/onnx/model.uint8.onnx")
    spec = onnx_runtime.read_meta(exported / "models/onnx/model.onnx").preprocess
    image = sorted((exported / "data/prepared/synthetic/images/001.arrangement_01").iterdir())[0]
    x = resize_and_crop(image, spec)
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    fused = sess.run(None, {"images": x})[0]
    # the same crop normalised here, by the stored mean and std, through the FP32 model
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    normalised = ((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    fp32 = onnx_runtime.run(onnx_runtime.session(exported / "models/onnx/model.onnx"), normalised)
    assert fused.shape == (1, 3) and np.abs(fused - fp32).max() <= 1e-4 * max(np.abs(fp32).max(), 1.0)


def test_parity_failure_leaves_no_onnx(tmp_path):
    assert not check_parity(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))["passed"]
    assert not check_parity(np.array([[1.0, 0.0]]), np.array([[1.01, 0.0]]))["passed"]
    assert check_parity(np.array([[1.0, 0.0]]), np.array([[1.00001, 0.0]]))["passed"]

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        export_fp32(Broken(), tmp_path / "model.onnx", 32, 17, {})
    assert list(tmp_path.iterdir()) == []  # no file, not even the temporary one


def test_corrupt_onnx_gives_a_clear_error(tmp_path, exported):
    bad = tmp_path / "model.onnx"
    bad.write_bytes((exported / "models/onnx/model.onnx").read_bytes()[:5000])
    with pytest.raises(ValueError, match=str(bad)):
        onnx_runtime.read_meta(bad)
    with pytest.raises(ValueError, match=str(bad)):
        onnx_runtime.session(bad)


def test_predict_with_each_model_kind(exported):
    image_dir = exported / "data/prepared/synthetic/images/001.arrangement_01"
    image = sorted(image_dir.iterdir())[0]
    pt = predict(exported / "models/resnet18.pt", [image], k=2)
    for onnx_file in ("model.onnx", "model.fp16.onnx", "model.int8.onnx"):
        got = predict(exported / "models/onnx" / onnx_file, [image], k=2)
        assert got[0]["top"][0]["class"] == pt[0]["top"][0]["class"]
    probs = [t["probability"] for t in pt[0]["top"]]
    assert len(probs) == 2 and probs[0] >= probs[1] and 0 < sum(probs) <= 1 + 1e-6
    folder = predict(exported / "models/onnx/model.onnx", [image_dir], k=1)
    assert len(folder) == len(list(image_dir.iterdir()))
    result = CliRunner().invoke(main, ["predict", str(exported / "models/resnet18.pt"), str(image), "-k", "3"])
    assert result.exit_code == 0 and result.output.count("\n") == 4 and str(image) in result.output


def test_predict_bad_inputs(tmp_path, exported):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    result = CliRunner().invoke(main, ["predict", str(exported / "models/onnx/model.onnx"), str(junk)])
    assert result.exit_code == 2 and f"skipped {junk}: cannot decode image" in result.output
    from tests.test_preprocess import png_claiming

    bomb = png_claiming(tmp_path, 30_000, 30_000)
    result = CliRunner().invoke(main, ["predict", str(exported / "models/onnx/model.onnx"), str(bomb)])
    assert result.exit_code == 2 and f"skipped {bomb}: claims 900,000,000 pixels" in result.output
    assert "refused before decoding" in result.output and len(result.output.strip().splitlines()) == 2
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 10)
    result = CliRunner().invoke(main, ["predict", str(engine), str(junk)])
    assert result.exit_code != 0 and "engine.json" in result.output
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(b"garbage")
    (tmp_path / "resnet18.json").write_text((exported / "models/resnet18.json").read_text())
    with pytest.raises(ValueError, match=f"{weights}: cannot be read, it is truncated or corrupt"):
        load_deployable(weights)


def test_int8_cpu_keeps_the_fastest_candidate_and_the_gate_decides_once(exported, tmp_path, monkeypatch):
    """The int8_cpu format is chosen on speed alone (the timings are the stand-in here; the files are
    real). The fastest is made to fail (a real, broken model): with no fallback allowed, the gate judges
    it once and rejects it, and no file is left; the slower, healthy format is never gated."""
    import shutil

    import pipeline.deploy.export as export_lib
    from pipeline.config.export import ExportConfig, Gate

    shutil.copytree(exported / "models", tmp_path / "models")
    fp32 = tmp_path / "models/onnx/model.onnx"
    speeds = {("QOperator", "MinMax"): 400.0, ("QDQ", "MinMax"): 300.0}
    real = export_lib.export_int8_cpu
    by_file: dict = {}

    def candidates_with_a_broken_fastest(source, out_dir, calibration, meta):
        made = real(source, out_dir, calibration, meta)
        damage(source, made["QOperator", "MinMax"], meta)  # the fastest now flips most predictions
        by_file.update(made)
        return made

    gated = []
    real_judge = export_lib.judge
    monkeypatch.setattr(export_lib, "export_int8_cpu", candidates_with_a_broken_fastest)
    monkeypatch.setattr(
        export_lib, "batch32_throughput", lambda path, x: speeds[next(k for k, p in by_file.items() if p == path)]
    )
    monkeypatch.setattr(export_lib, "judge", lambda *a: gated.append(a) or real_judge(*a))
    files = {"fp32": fp32, "int8_cpu": tmp_path / "models/onnx/model.int8_cpu.onnx"}
    # the default 64 calibration images, more than the tiny training split holds: a count that is not
    # a multiple of 8 (it once made ONNX Runtime's histogram calibrators fail on the short last batch)
    cfg = ExportConfig(precisions=["fp32", "int8_cpu"], gates={"int8_cpu": Gate(0.2, 0.7)}, int8_fallback_stages=0)
    result = export_lib.export_all(
        tmp_path / "models/resnet18.pt", exported / "data/prepared", files, tmp_path / "export.json", cfg, seed=0
    )
    variant = result.variants["int8_cpu"]
    entry = variant.details
    assert len(gated) == 1 and variant.status == "rejected" and not files["int8_cpu"].exists()
    assert (entry["format"], entry["calibration"]) == ("QOperator", "MinMax")  # the fastest, chosen on speed
    assert [c["batch32_img_s"] for c in entry["candidates"]] == [400.0, 300.0]
    assert [t["passed"] for t in entry["selection"]] == [False]  # no fallback: 0 stages allowed
    assert variant.gate is not None and variant.gate.agreement < 0.7
    assert not list((tmp_path / "models/onnx").glob("tmp*"))


@pytest.mark.parametrize("precision", ["int8", "int8_cpu"])
def test_an_int8_short_on_selection_falls_back_for_real_and_is_gated_once(exported, tmp_path, precision, monkeypatch):
    """Each INT8 variant against thresholds nothing can meet: on the selection images (training images
    calibration left, for the tiny set), every layer in INT8 falls short, then the fallback quantizes for
    real with the stem and one, then two stages in FP32; every try is recorded; the last one faces the
    gate once, is rejected, and its file goes."""
    import shutil

    import pipeline.deploy.export as export_lib
    from pipeline.config.export import ExportConfig, Gate

    shutil.copytree(exported / "models", tmp_path / "models")
    files = {"fp32": tmp_path / "models/onnx/model.onnx", precision: tmp_path / f"models/onnx/model.{precision}.onnx"}
    gated = []
    real_judge = export_lib.judge
    monkeypatch.setattr(export_lib, "judge", lambda *a: gated.append(a) or real_judge(*a))
    cfg = ExportConfig(precisions=["fp32", precision], gates={precision: Gate(0.0, 1.01)}, int8_fallback_stages=2)
    result = export_lib.export_all(
        tmp_path / "models/resnet18.pt", exported / "data/prepared", files, tmp_path / "export.json", cfg, seed=0
    )
    variant = result.variants[precision]
    tries = variant.details["selection"]
    assert variant.status == "rejected" and not files[precision].exists() and len(gated) == 1
    assert [t["kept_in_fp32"] for t in tries] == [[], ["stem", "layer1"], ["stem", "layer1", "layer2"]]
    assert not any(t["passed"] for t in tries) and all(t["images"] == tries[0]["images"] > 8 for t in tries)
    assert variant.details["kept_in_fp32"] == ["stem", "layer1", "layer2"]  # the last try was gated
    assert "INT8 settings chosen on" in result.decided_on and "training images" in result.decided_on
    assert not list((tmp_path / "models/onnx").glob("tmp*"))


def test_the_fallback_stops_at_the_first_try_that_selection_accepts(exported, tmp_path):
    """A recipe whose candidate and first fallback are broken (real ONNX files, classifier negated) and
    whose second fallback is FP32 itself: selection accepts the second, the third is never made, and the
    gate judges only the second, once."""
    import shutil

    from pipeline.config.export import Gate
    from pipeline.deploy.export import Candidate, Inputs, Recipe, export_variant, judge, measure_against

    fp32 = exported / "models/onnx/model.onnx"
    x = np.random.default_rng(0).standard_normal((500, 3, 32, 32)).astype(np.float32)
    ref = onnx_runtime.run(onnx_runtime.session(fp32), x)
    labels = {"gate": ref.argmax(1), "test": ref.argmax(1)}
    gated = []

    def gate(path, precision):
        gated.append(path.name)
        got = onnx_runtime.run(onnx_runtime.session(path), x)
        return judge(Gate(), {"gate": ref, "test": ref}, {"gate": got, "test": got}, labels), "cpu"

    def select(path, precision):
        got = onnx_runtime.run(onnx_runtime.session(path), x[:100])
        return measure_against(Gate(), ref[:100], got, labels["gate"][:100])

    def candidates(inputs, scratch):
        damage(fp32, scratch / "broken.onnx", None)
        yield Candidate("broken", scratch / "broken.onnx")

    def fallback(inputs, scratch, failed):
        assert failed.label == "broken"
        damage(fp32, scratch / "r1.onnx", None)
        yield Candidate("r1", scratch / "r1.onnx", {"kept_in_fp32": ["stem", "layer1"]})
        shutil.copy(fp32, scratch / "r2.onnx")
        yield Candidate("r2", scratch / "r2.onnx", {"kept_in_fp32": ["stem", "layer1", "layer2"]})
        raise AssertionError("a third try after one was accepted")

    out = tmp_path / "model.int8.onnx"
    inputs = Inputs(fp32, x[:8], onnx_runtime.read_meta(fp32), fallback_stages=3)
    variant = export_variant("int8", Recipe(candidates, fallback, calibrated=True), inputs, out, gate, select)
    assert variant.status == "passed" and out.read_bytes() == fp32.read_bytes() and gated == ["r2.onnx"]
    assert variant.details["kept_in_fp32"] == ["stem", "layer1", "layer2"]
    assert [t["passed"] for t in variant.details["selection"]] == [False, False, True]
    assert variant.gate is not None and variant.gate.agreement == 1.0


def test_a_gate_refuses_to_decide_on_too_few_images(exported, tmp_path):
    """0.99 agreement and a half-point top-1 drop on the tiny set's ~70 gate images: one image would
    be worth more than the whole tolerance. The export refuses before writing anything, naming the
    gate and the count it needs; the variants already there are kept."""
    import shutil

    import pipeline.deploy.export as export_lib
    from pipeline.config.export import ExportConfig, Gate

    shutil.copytree(exported / "models", tmp_path / "models")
    files = {p: tmp_path / f"models/onnx/{'model' if p == 'fp32' else 'model.' + p}.onnx" for p in ("fp32", "fp16")}
    before = {p: f.read_bytes() for p, f in files.items()}
    strict = ExportConfig(precisions=["fp32", "fp16"], gates={"fp16": Gate(0.005, 0.99)})
    with pytest.raises(export_lib.ExportError, match=r"export.gates.fp16 .* needs at least 1000 images .* holds \d+"):
        export_lib.export_all(
            tmp_path / "models/resnet18.pt", exported / "data/prepared", files, tmp_path / "export.json", strict, 0
        )
    assert {p: f.read_bytes() for p, f in files.items()} == before and not (tmp_path / "export.json").exists()


def with_logit_offset(source, path, offset: np.ndarray) -> None:
    """A real ONNX model: `source` with a constant added to its logits."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{out}_raw" if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(offset.astype(np.float32), "offset"))
    model.graph.node.append(helper.make_node("Add", [f"{out}_raw", "offset"], [out]))
    onnx.save(model, str(path))


def test_a_gate_passes_one_flip_in_500_and_fails_fifteen(exported, tmp_path):
    """FP32 and two real variants of it on 500 inputs: a logit offset that flips the top-1 class of
    exactly 1 (then 15) of them. At 0.99 agreement and a 0.01 drop (500 images: just enough to
    decide), one flip passes and fifteen fail; the Wilson interval of 15 flips lies under 0.99."""
    from pipeline.config.export import Gate
    from pipeline.deploy.export import check_gate_images, judge

    fp32 = exported / "models/onnx/model.onnx"
    x = np.random.default_rng(0).standard_normal((500, 3, 32, 32)).astype(np.float32)
    ref = onnx_runtime.run(onnx_runtime.session(fp32), x)
    top = ref.argmax(1)
    klass = int(np.bincount(top, minlength=3).argmin())  # the class least often on top: most inputs can flip to it
    gaps = np.sort((ref.max(1) - ref[:, klass])[top != klass])
    gate = Gate(max_top1_drop=0.01, min_agreement=0.99)
    check_gate_images({"fp16": gate}, ["fp32", "fp16"], 500, "500 inputs")  # 500 decide 0.99
    with pytest.raises(Exception, match="needs at least 500 images"):
        check_gate_images({"fp16": gate}, ["fp32", "fp16"], 499, "499 inputs")
    verdicts = {}
    for flips in (1, 15):
        offset = np.zeros(3)
        offset[klass] = (gaps[flips - 1] + gaps[flips]) / 2  # between the k-th and (k+1)-th smallest gap
        variant = tmp_path / f"flip{flips}.onnx"
        with_logit_offset(fp32, variant, offset)
        got = onnx_runtime.run(onnx_runtime.session(variant), x)
        assert int((got.argmax(1) != top).sum()) == flips
        logits, reference, labels = {"gate": got, "test": got}, {"gate": ref, "test": ref}, {"gate": top, "test": top}
        verdicts[flips] = judge(gate, reference, logits, labels)
    one, fifteen = verdicts[1], verdicts[15]
    assert one.passed and one.agreement == 0.998 and one.top1_drop == pytest.approx(0.002) and one.images == 500
    assert not fifteen.passed and fifteen.agreement == 0.97 and fifteen.agreement_ci95[1] < 0.99
    assert one.agreement_ci95[0] > 0.98  # the interval of one flip in 500 lies above 0.98
