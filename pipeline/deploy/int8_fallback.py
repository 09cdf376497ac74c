"""The INT8 fallback: which layers INT8 hurts most (measured with ModelOpt's fake quantization), and the
search for the fewest of them to keep in FP32.

Every Conv and the classifier are fake-quantized as the exported INT8 graphs quantize them
(`qat.quant_config`: per-channel int8 weights, per-tensor int8 inputs, the residual branches'
outputs); then each layer alone is put back in FP32 and the logits' error against FP32 is measured
again on the ranking images. A layer's sensitivity is how much of the error that removes. This is
ModelOpt's and NNCF's accuracy-control idea (rank, then keep the worst layers in high precision),
in one pass of forward calls: 54 for a ResNet-50, a few seconds on 128 small images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts.export import Sensitivity
from pipeline.deploy import qat


def quantized_layers(model: nn.Module) -> list[str]:
    """Every Conv and Linear of the network, in order: what INT8 quantizes."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def _quantizers(student: nn.Module, layer: str) -> list[Any]:
    """The quantizers that keeping `layer` in FP32 switches off: its weight's and input's, and the
    output quantizer of the batch norm after it (a branch output the exported graph writes in INT8)."""
    module: Any = student.get_submodule(layer)
    found = [module.weight_quantizer, module.input_quantizer]
    bn = dict(qat.conv_bn_pairs(student)).get(layer)
    if bn is not None:
        norm: Any = student.get_submodule(bn)
        if norm.output_quantizer.is_enabled:
            found.append(norm.output_quantizer)
    return [q for q in found if q.is_enabled]


@torch.no_grad()
def rank_layers(model: nn.Module, calibration: torch.Tensor, images: torch.Tensor) -> list[Sensitivity]:
    """Every quantized layer by how much of the INT8 error keeping it in FP32 removes, largest first
    (ties in network order)."""
    model = model.eval()
    student = qat.fake_quantize(model, calibration)
    reference = model(images)
    scale = float((reference**2).mean())

    def error() -> float:
        return float(((student(images) - reference) ** 2).mean()) / scale

    full = error()
    ranked = []
    for layer in tqdm(quantized_layers(model), desc="INT8 sensitivity per layer", unit="layer", leave=False):
        switched = _quantizers(student, layer)
        for q in switched:
            q.disable()
        ranked.append(Sensitivity(layer, (full - error()) / full if full > 0 else 0.0))
        for q in switched:
            q.enable()
    return sorted(ranked, key=lambda s: -s.error_removed)


def fewest(accepts, most: int) -> int | None:
    """The smallest k in 1..`most` that `accepts(k)`, assuming that more never hurts: doubling from 1,
    then bisecting between the last k refused and the first accepted; None if `most` is refused.
    `accepts` is called at most about 2 log2(most) times, never twice for one k."""
    seen: dict[int, bool] = {}

    def ask(k: int) -> bool:
        if k not in seen:
            seen[k] = accepts(k)
        return seen[k]

    low, k = 0, 1  # low: the largest k known to be refused
    while not ask(min(k, most)):
        if k >= most:
            return None
        low, k = k, k * 2
    high = min(k, most)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if ask(mid) else (mid, high)
    return high
