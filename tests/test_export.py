"""ONNX export parity, the ModelOpt variants in ONNX Runtime, and `lio predict`."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from pipeline import onnx_runtime
from pipeline.deploy import load_deployable
from pipeline.export import check_parity, export_fp32
from pipeline.predict import predict
from stages.cli import main


def test_fp32_export_is_checked_and_matches_pytorch(exported):
    report = json.loads((exported / "reports/export.json").read_text())
    assert set(report) == {"fp32", "fp16", "int8"}
    parity = report["fp32"]["parity_vs_pytorch"]
    assert parity["passed"] and parity["same_top1"] and parity["images"] == 12
    assert parity["max_abs_diff"] <= 1e-4 * parity["largest_logit"]
    assert report["fp32"]["provider"] == "CPUExecutionProvider"
    path = exported / "models/onnx/model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    assert not (exported / "models/onnx/model.onnx.data").exists()  # one self-contained file
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert onnx_runtime.read_meta(path)["classes"] == ["a", "b", "c"]


def test_dynamic_batch_in_onnx_runtime(exported):
    sess = onnx_runtime.session(exported / "models/onnx/model.onnx")
    for batch in (1, 5):
        assert onnx_runtime.run(sess, np.zeros((batch, 3, 32, 32), np.float32)).shape == (batch, 3)


@pytest.mark.parametrize("precision,tensor_type", [("fp16", onnx.TensorProto.FLOAT16), ("int8", onnx.TensorProto.INT8)])
def test_precision_variants(exported, precision, tensor_type):
    report = json.loads((exported / "reports/export.json").read_text())[precision]
    assert report["top1_agreement_vs_fp32"] >= 0.75 and 0 <= report["test_top1"] <= 1
    model = onnx.load(str(exported / f"models/onnx/model.{precision}.onnx"))
    types = {i.data_type for i in model.graph.initializer}
    types |= {a.t.data_type for n in model.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR}
    zero_points = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert tensor_type in types or (precision == "int8" and zero_points)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # same preprocessing for all


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
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 10)
    result = CliRunner().invoke(main, ["predict", str(engine), str(junk)])
    assert result.exit_code != 0 and "engine.json" in result.output
    weights = tmp_path / "resnet18.pt"
    weights.write_bytes(b"garbage")
    (tmp_path / "resnet18.json").write_text((exported / "models/resnet18.json").read_text())
    with pytest.raises(ValueError, match=f"{weights}: cannot be read, it is truncated or corrupt"):
        load_deployable(weights)
