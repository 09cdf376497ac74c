"""INT8 helpers that import no torch: ONNX Runtime's static quantization for its CPU provider (the
work of pipeline.deploy.convert.export_int8_cpu, in a fresh interpreter, which starts in about 2 s
without torch instead of 5 to 8 s with it), and which layers compute in INT8: the graph's node for
each layer, and the layers the INT8 fallback keeps in FP32.
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import multiprocessing
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.export import Layers
from pipeline.deploy import onnx_runtime

#: int8_cpu candidates: ONNX Runtime (format, calibration method); the fastest that passes its gate is kept.
#: Which format runs faster depends on the CPU; MinMax agreed with FP32 at least as well as Percentile,
#: Entropy and moving-average calibration on every run measured (docs/measured-log.md, "INT8 at 0.99").
CPU_INT8_CANDIDATES = (("QOperator", "MinMax"), ("QDQ", "MinMax"))


@dataclass(frozen=True)
class Failed:
    """A format ONNX Runtime could not make, and why (in place of its file)."""

    reason: str


def _scopes(node: onnx.NodeProto) -> list[str]:
    return ast.literal_eval(next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "[]"))


def _layer_of(scope: str) -> str:
    """The conv a folded batch norm's scope stands for (torch's exporter folds each batch norm into the
    Conv before it, and the fused node keeps the batch norm's scope): bn1 -> conv1, downsample.1 ->
    downsample.0; any other scope names its own layer."""
    if scope.endswith("downsample.1"):
        return scope[: -len("1")] + "0"
    return re.sub(r"(^|\.)bn(\d)$", r"\1conv\2", scope)


def layer_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """torchvision module name of every Conv and Gemm (e.g. "layer4.2.conv3", "fc") -> its node's name,
    from the module scopes torch's exporter writes into each node's metadata."""
    found = {}
    for node in model.graph.node:
        scopes = _scopes(node)
        if node.op_type in ("Conv", "Gemm") and len(scopes) > 1:
            found[_layer_of(scopes[-2])] = node.name
    return found


#: ONNX Runtime's QOperator kernels: a layer made of one of these computes in INT8
_INT8_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger")


def layer_precision(model: onnx.ModelProto) -> Layers:
    """Which Conv and Gemm layers compute in INT8, from the nodes: a QOperator kernel, or (QDQ, as
    TensorRT and OpenVINO read it) a Conv or Gemm whose weight comes out of a DequantizeLinear."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    int8, in_float = 0, []
    for node in model.graph.node:
        if node.op_type in _INT8_OPS:
            int8 += 1
        elif node.op_type in ("Conv", "Gemm", "MatMul"):
            source = made_by.get(node.input[1]) if len(node.input) > 1 else None
            if source is not None and source.op_type == "DequantizeLinear":
                int8 += 1
            else:
                in_float.append(f"{node.name} ({node.op_type})")
    return Layers(int8, int8 + len(in_float), in_float)


#: nodes that pass an INT8 tensor on unchanged in meaning: walking back through them finds a tensor's source
_PASS_THROUGH = ("Relu", "MaxPool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape")


def input_sources(model: onnx.ModelProto, layers: tuple[str, ...]) -> list[str]:
    """The nodes ONNX Runtime must also keep in FP32 for `layers` to read FP32 inputs: its QOperator
    kernels write every quantized node's output in INT8, so an excluded Conv alone would still read an
    INT8 tensor. From each layer's input, back through pass-through nodes (ReLU, pooling, reshapes) to
    the Conv, Gemm or Add that computed it, every node on the way."""
    made_by = {o: n for n in model.graph.node for o in n.output}
    nodes = layer_nodes(model)
    found: list[str] = []
    for layer in layers:
        node = made_by.get(next(n for n in model.graph.node if n.name == nodes[layer]).input[0])
        while node is not None and node.name not in found:
            found.append(node.name)
            if node.op_type not in _PASS_THROUGH:
                break
            node = made_by.get(node.input[0])
    return found


@functools.cache
def fresh_interpreter() -> concurrent.futures.ProcessPoolExecutor:
    """One spawned interpreter that runs only ONNX Runtime's quantizer, started once per process and
    kept for every later call (each start costs about 2 s)."""
    return concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def quantize_static_cpu(
    fp32: Path,
    out_dir: Path,
    calibration: np.ndarray,
    meta: Deployable,
    settings: tuple[tuple[str, str], ...],
    keep_layers: tuple[str, ...],
) -> dict[tuple[str, str], Path | Failed]:
    """pipeline.deploy.convert.export_int8_cpu's work, in the fresh interpreter."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # equal batches: the histogram calibrators (Percentile, Entropy) stack per-batch outputs and fail on a short
    # last batch; the largest size up to 8 that divides the count (8 for the default 64 images)
    size = max(d for d in range(1, 9) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(
                [{meta.input: calibration[i : i + size].astype(np.float32)} for i in range(0, len(calibration), size)]
            )

        def get_next(self):
            return next(self.batches, None)

    out_dir.mkdir(parents=True, exist_ok=True)
    pre = out_dir / f"{fp32.stem}.pre.onnx"  # shape inference and graph optimisation, once per scratch folder
    if not pre.exists():
        quant_pre_process(str(fp32), str(pre))
    graph = onnx.load(str(pre))
    nodes = layer_nodes(graph)
    exclude = list(dict.fromkeys([nodes[name] for name in keep_layers] + input_sources(graph, keep_layers)))
    made: dict[tuple[str, str], Path | Failed] = {}
    for fmt, method in settings:
        path = out_dir / f"{fmt}-{method}{f'-fp32-{len(keep_layers)}' if keep_layers else ''}.onnx"
        try:
            quantize_static(
                str(pre),
                str(path),
                Reader(),
                quant_format=QuantFormat[fmt],
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod[method],
                nodes_to_exclude=exclude,
            )
        except ValueError as e:
            # ONNX Runtime 1.24's QOperator quantizer fails on some trained weights: when a bias would
            # overflow int32 it re-quantizes the weight per tensor with per-channel scales ("operands could
            # not be broadcast"). The other format still runs; the caller records why this one is missing.
            made[(fmt, method)] = Failed(f"{type(e).__name__}: {e}".strip())
            continue
        proto = onnx.load(str(path))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
        made[(fmt, method)] = path
    return made
