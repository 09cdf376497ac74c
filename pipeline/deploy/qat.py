"""Quantization-aware fine-tuning (`export.qat`): the stripped model fine-tuned through ModelOpt's
INT8 fake quantization towards the FP32 network's logits (the gate measures agreement with FP32),
on the training images with the training augmentation, never a gate or selection image.

The student is quantized where ONNX Runtime's CPU graph and TensorRT quantize: per-channel int8
weights and per-tensor int8 inputs of every Conv and the Linear (stem and classifier included), and
each residual branch's output before the addition. Its batch norms stay, with their statistics,
through the fine-tuning and are folded afterwards (`fold`, exact for per-channel weights); the
fine-tuned student exports as a QDQ graph for TensorRT, and without its quantizers as the FP32
weights ONNX Runtime's static quantization takes for the CPU.

Measured on the embedded set (docs/measured-log.md, "Quantization-aware fine-tuning"): no setting
lowered the INT8 logit error, so `export.qat.method` defaults to `none`. Most of that error behaves
as noise: a float-rounding change (folding the batch norms) alone moves the fake-quantized logits by
a third of it, which gradient steps cannot follow.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.artifacts.export import FakeQuantParity, QatSummary
from pipeline.config.export import QATConfig
from pipeline.core.arch import STAGES


def _blocks(model: nn.Module) -> Iterator[tuple[str, Any]]:
    """(name, block) of every residual block of a torchvision ResNet, in order."""
    for stage in STAGES:
        for b, block in enumerate(cast(nn.Sequential, model.get_submodule(stage))):
            yield f"{stage}.{b}", block


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) module names of a torchvision ResNet, each batch norm right after its conv."""
    pairs = [("conv1", "bn1")]
    for name, block in _blocks(model):
        pairs += [(f"{name}.conv{i}", f"{name}.bn{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
        if block.downsample is not None:
            pairs.append((f"{name}.downsample.0", f"{name}.downsample.1"))
    return pairs


def branch_outputs(model: nn.Module) -> list[str]:
    """Each residual branch's last batch norm and the downsample's: the tensors entering the additions
    (ONNX Runtime's QLinearConv writes them in uint8; TensorRT fuses the addition into the conv)."""
    names = []
    for name, block in _blocks(model):
        names.append(f"{name}.bn{3 if hasattr(block, 'conv3') else 2}")
        if block.downsample is not None:
            names.append(f"{name}.downsample.1")
    return names


def quant_config(model: nn.Module) -> dict:
    """ModelOpt's INT8 recipe, spelled out by module name: per-channel int8 weights and per-tensor int8
    inputs on every Conv and the Linear (stem and classifier included), plus the residual branches'
    outputs; max calibration. Everything else (the batch norms' inputs, pooling) stays float."""
    int8 = {"num_bits": 8, "axis": None}
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    cfg: list[dict] = [{"quantizer_name": "*", "enable": False}]
    cfg += [{"quantizer_name": f"{n}.weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}} for n in layers]
    cfg += [{"quantizer_name": f"{n}.input_quantizer", "cfg": int8} for n in layers]
    cfg += [{"quantizer_name": f"{n}.output_quantizer", "cfg": int8} for n in branch_outputs(model)]
    return {"quant_cfg": cfg, "algorithm": "max"}


def fake_quantize(model: nn.Module, calibration: torch.Tensor, batch: int = 32) -> nn.Module:
    """A copy of `model` with INT8 fake quantization, its ranges calibrated (max) on `calibration`
    (training images). The batch norms stay: trained through, the folded weights of a BN-folded model
    are ill-conditioned (a channel with a small variance gets a large weight), and Adam's first steps
    multiplied the logit error by eight. Per-channel weight quantization commutes with the fold
    (`fold`), so nothing is lost by folding afterwards."""
    import modelopt.torch.quantization as mtq

    student = copy.deepcopy(model).eval()

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for i in range(0, len(calibration), batch):
                m(calibration[i : i + batch])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mtq.quantize(student, quant_config(student), forward_loop=forward_loop)


def fold(student: nn.Module) -> nn.Module:
    """A copy of the fake-quantized `student` with every batch norm folded into its conv: the graph
    ONNX Runtime and TensorRT run. Exact: with s = gamma / sqrt(var + eps) per output channel, the
    weight w*s quantized against amax*|s| is s times w quantized against amax; a batch norm's output
    quantizer becomes its conv's."""
    folded = copy.deepcopy(student).eval()
    with torch.no_grad():
        for conv_name, bn_name in conv_bn_pairs(folded):
            conv: Any = folded.get_submodule(conv_name)  # ModelOpt's quantized conv and batch norm
            bn: Any = folded.get_submodule(bn_name)
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            if conv.weight_quantizer.is_enabled:
                conv.weight_quantizer.amax = conv.weight_quantizer.amax * scale.abs().view(-1, 1, 1, 1)
            if bn.output_quantizer.is_enabled:
                conv.output_quantizer = bn.output_quantizer
            parent, attr = _parent(folded, bn_name)
            setattr(parent, attr, nn.Identity())
    return folded


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    head, _, last = name.rpartition(".")
    return (model.get_submodule(head) if head else model), last


@dataclass
class Distillation:
    """What the fine-tuning did: the loss per epoch and the student's agreement with the teacher on
    the calibration images before and after (training images: the gate images are never seen)."""

    epochs: int
    steps: int
    loss: list[float] = field(default_factory=list)
    agreement_before: float = 0.0
    agreement_after: float = 0.0
    relative_error_before: float = 0.0
    relative_error_after: float = 0.0

    @property
    def converged(self) -> bool:
        """Finite losses, and the student's logit error no more than a tenth above where it started
        (a run that made the fake-quantized model worse must not ship; a tenth is the run-to-run
        noise of a short run measured on the embedded set)."""
        finite = all(math.isfinite(v) for v in self.loss)
        return finite and self.relative_error_after <= 1.1 * self.relative_error_before

    def summary(self) -> QatSummary:
        return QatSummary(**self.__dict__, converged=self.converged)


def _compare(student: nn.Module, teacher: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(top-1 agreement, relative logit error) of the student against the teacher on `images`."""
    with torch.no_grad():
        s, t = student(images), teacher(images)
    agreement = float((s.argmax(1) == t.argmax(1)).float().mean())
    return agreement, float((s - t).norm() / t.norm())


def distil(
    student: nn.Module,
    teacher: nn.Module,
    train_set,
    calibration: torch.Tensor,
    cfg: QATConfig,
    seed: int,
) -> Distillation:
    """Fine-tune the fake-quantized `student` (in place) on `train_set` ((image, label) pairs, the
    training augmentation) with AdamW and a cosine schedule: the squared error to the FP32 teacher's
    logits when `cfg.distill` (a near-tie flips on a small logit error, which the KL divergence of
    confident softmaxes hardly sees), else cross-entropy on the labels."""
    teacher = teacher.eval()
    torch.manual_seed(seed)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(train_set) > cfg.batch_size,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    log = Distillation(epochs=cfg.epochs, steps=cfg.epochs * len(loader))
    log.agreement_before, log.relative_error_before = _compare(student.eval(), teacher, calibration)
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(1, log.steps)))
    )
    student.eval()  # the batch norms keep their statistics: `fold` folds them, and batch statistics of
    # same-class groups are far from them (training in train mode raised the logit error 3-fold)
    for epoch in range(cfg.epochs):
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"qat {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for images, labels in bar:
            logits = student(images)
            if cfg.distill:
                with torch.no_grad():
                    target = teacher(images)
                loss = F.mse_loss(logits, target)
            else:
                loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())
            total, count = total + value * len(images), count + len(images)
            bar.set_postfix(loss=f"{value:.4f}")
            if not math.isfinite(value):
                break
        log.loss.append(total / max(count, 1))
        if not math.isfinite(log.loss[-1]):
            break
    log.agreement_after, log.relative_error_after = _compare(student, teacher, calibration)
    return log


@dataclass
class Student:
    """The fine-tuned fake-quantized model, what its fine-tuning did, and (written by the export)
    its weights without quantizers as an FP32 ONNX file."""

    model: nn.Module
    log: Distillation
    fp32: Path | None = None


def train_student(model: nn.Module, train_set, calibration: torch.Tensor, cfg: QATConfig, seed: int) -> Student:
    """Fake-quantize and calibrate on `calibration`, distil `cfg.epochs` epochs from `model`, fold."""
    student = fake_quantize(model, calibration)
    log = distil(student, model, train_set, calibration, cfg, seed)
    return Student(fold(student), log)


def parity(student: nn.Module, run, images: np.ndarray) -> FakeQuantParity:
    """The exported graph (`run`: numpy -> logits) against the fake-quantized model it came from: the
    share with the same top-1, the relative logit difference and the largest one (values on a step's
    edge round either way in integer and float arithmetic; nothing else should differ)."""
    with torch.no_grad():
        expected = student.eval()(torch.from_numpy(images)).numpy()
    got = np.asarray(run(images))
    scale = float(np.abs(expected).max())
    return FakeQuantParity(
        images=len(images),
        same_top1=float((got.argmax(1) == expected.argmax(1)).mean()),
        relative_diff=float(np.linalg.norm(got - expected) / np.linalg.norm(expected)),
        max_abs_diff=float(np.abs(got - expected).max()),
        largest_logit=scale,
    )


def plain(student: nn.Module) -> nn.Module:
    """The fine-tuned student with its quantizers switched off: the BN-folded FP32 network whose
    weights ONNX Runtime's static quantization takes for the CPU."""
    import modelopt.torch.quantization as mtq

    model = copy.deepcopy(student)
    mtq.disable_quantizer(model, "*")
    return model.eval()
