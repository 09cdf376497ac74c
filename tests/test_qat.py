"""Quantization-aware fine-tuning (`export.qat`): the fold, the exported graphs against the fake-quantized
student, every Conv and the classifier in INT8, and a run that does not converge."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from pipeline.artifacts.deployable import Deployable, Preprocess
from pipeline.config.export import ExportConfig, Gate, QATConfig
from pipeline.deploy import qat
from pipeline.deploy.convert import export_qdq
from pipeline.deploy.export import export_all


def resnet18_with_statistics() -> torch.nn.Module:
    """A ResNet-18 whose batch norms are far from the identity (random statistics and affine terms,
    negative scales included), so that a wrong fold shows."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_var is not None and m.running_mean is not None
            m.running_var.uniform_(0.3, 3.0)
            m.running_mean.normal_(0, 0.5)
            m.weight.data.normal_(0, 1.0)
            m.bias.data.normal_(0, 0.3)
    return model


def test_the_fold_is_exact_at_every_conv_and_keeps_every_quantizer():
    """Each conv of the folded student, fed what its unfolded twin was fed, gives the twin's conv ->
    batch norm -> output quantizer to float precision (a weight or an output on a step's edge may round
    the other way: one step, on a handful of values). Every Conv and the Linear keep their weight and
    input quantizers; each residual branch's output quantizer moves from its batch norm to its conv."""
    model = resnet18_with_statistics()
    x = torch.randn(8, 3, 32, 32)
    student = qat.fake_quantize(model, x)
    folded = qat.fold(student)
    inputs = {}
    hooks = [
        student.get_submodule(c).register_forward_hook(lambda m, i, o, c=c: inputs.__setitem__(c, i[0]))
        for c, _ in qat.conv_bn_pairs(student)
    ]
    with torch.no_grad():
        student(x)
        for conv, bn in qat.conv_bn_pairs(student):
            expected = student.get_submodule(bn)(student.get_submodule(conv)(inputs[conv]))
            got = folded.get_submodule(conv)(inputs[conv])
            step = float(folded.get_submodule(conv).output_quantizer.amax or 0) / 127
            diff = (got - expected).abs()
            assert float(diff.mean()) <= 1e-4 * float(expected.abs().mean()), conv
            assert float(diff.max()) <= step + 1e-3 * float(expected.abs().max()), conv
    for h in hooks:
        h.remove()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    layers = [n for n, m in folded.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert len(layers) == 21  # resnet18: 20 convs and the classifier
    for name in layers:
        layer = folded.get_submodule(name)
        assert layer.weight_quantizer.is_enabled and layer.input_quantizer.is_enabled, name
    outputs = [n for n in layers if folded.get_submodule(n).output_quantizer.is_enabled]
    assert sorted(outputs) == sorted(
        n.replace("bn2", "conv2").replace("downsample.1", "downsample.0") for n in qat.branch_outputs(student)
    )


def test_the_qdq_graph_computes_what_the_fake_quantized_student_computes():
    """The exported QDQ graph, run by ONNX Runtime's reference operators (no fusion into integer
    kernels, whose own rounding is the runtime's), against the folded student it came from: the same
    top-1 and several times closer to the student than the student is to the unquantized network (the
    graph is quantized where the student is, and only there). Not exact: a float difference flips a
    rounding on a step's edge, and the flip travels (the same input moved by 1e-6 moves this random
    network's logits by about 2%)."""
    model = resnet18_with_statistics()
    x = torch.randn(64, 3, 32, 32)
    folded = qat.fold(qat.fake_quantize(model, x[:16]))
    with torch.no_grad():
        fp32 = model(x).numpy()
    meta = Deployable("resnet18", 3, ["a", "b", "c"], Preprocess(resize=36, crop=32, mean=[0.5] * 3, std=[0.5] * 3))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qdq.onnx"
        export_qdq(folded, path, 18, meta)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    report = qat.parity(folded, lambda a: got, x.numpy())
    to_fp32 = float(np.linalg.norm(got - fp32) / np.linalg.norm(fp32))
    assert report.images == 64 and report.same_top1 >= 0.9
    assert report.relative_diff < 0.25 * to_fp32 and to_fp32 > 0.01


@pytest.fixture(scope="module")
def qat_export(exported, tmp_path_factory):
    """export_all with quantization-aware fine-tuning on (one epoch, at a learning rate that leaves the
    random tiny model as it was: one step that moves a weight across a rounding edge moves its logit
    error by a third) and gates that pass anything."""
    root = tmp_path_factory.mktemp("qat")
    shutil.copytree(exported / "models", root / "models")
    precisions = ["fp32", "int8", "int8_cpu"]
    files = {p: root / f"models/onnx/{'model' if p == 'fp32' else 'model.' + p}.onnx" for p in precisions}
    loose = {p: Gate(1.0, 0.0) for p in precisions[1:]}
    cfg = ExportConfig(precisions=precisions, gates=loose, calib_images=8, qat=QATConfig("modelopt", 1, 1e-12, 8))
    result = export_all(root / "models/resnet18.pt", exported / "data/prepared", files, root / "export.json", cfg, 0, 8)
    return result, files


def test_qat_ships_every_conv_and_the_classifier_in_int8_in_both_graphs(qat_export):
    result, files = qat_export
    for precision in ("int8", "int8_cpu"):
        v = result.variants[precision]
        assert v.status == "passed" and v.kept_in_fp32 == [], precision
        assert [t.kept_in_fp32 for t in v.selection] == [[]]
        log = v.qat
        assert log is not None and log.epochs == 1 and log.steps >= 1 and all(np.isfinite(log.loss)) and log.converged
    parity = result.variants["int8"].parity_vs_fake_quant  # recorded; its bound is tested above
    assert parity is not None and parity.images == 8 and np.isfinite(parity.relative_diff)

    # TensorRT's graph: both inputs of every Conv and of the Gemm come through DequantizeLinear
    graph = onnx.load(str(files["int8"])).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 21 and [n.op_type for n in layers].count("Gemm") == 1
    for node in layers:
        assert producer.get(node.input[0]) == "DequantizeLinear", node.name
        assert producer.get(node.input[1]) == "DequantizeLinear", node.name

    # ONNX Runtime's CPU graph: no float Conv or Gemm left
    ops = [n.op_type for n in onnx.load(str(files["int8_cpu"])).graph.node]
    fmt = result.variants["int8_cpu"].format
    if fmt == "QOperator":
        assert ops.count("QLinearConv") == 20 and "Conv" not in ops and "Gemm" not in ops
    else:  # QDQ: each Conv and the Gemm between DequantizeLinear nodes
        assert ops.count("Conv") == 20 and ops.count("DequantizeLinear") >= 2 * 21


def test_a_qat_run_that_does_not_converge_ships_nothing_and_says_so(exported, tmp_path):
    """A learning rate that blows the student up: with no fallback allowed, the variant is rejected
    whatever its (loose) gate says, and the report names the reason."""
    shutil.copytree(exported / "models", tmp_path / "models")
    files = {"fp32": tmp_path / "models/onnx/model.onnx", "int8": tmp_path / "models/onnx/model.int8.onnx"}
    cfg = ExportConfig(
        precisions=["fp32", "int8"],
        gates={"int8": Gate(0.01, 0.0)},
        calib_images=8,
        qat=QATConfig("modelopt", 1, 10.0, 8),
        int8_fallback_layers=0,
    )
    result = export_all(
        tmp_path / "models/resnet18.pt", exported / "data/prepared", files, tmp_path / "e.json", cfg, 0, 8
    )
    v = result.variants["int8"]
    assert v.qat is not None and not v.qat.converged and v.status == "rejected" and not files["int8"].exists()
    assert "did not converge" in str(v.rejected_because) and v.gate is not None and not v.gate.passed
