"""LIOModel: an unmodified torchvision classifier plus training-only OEL and SCL heads.

The stage feature maps are read with forward hooks, so the backbone's modules and its
forward are exactly torchvision's; in eval mode (or without labels) the model is the
backbone alone, which is what the strip stage proves and ships.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pipeline.lio.oel import OELHead, pseudo_mask
from pipeline.lio.scl import SCLHead, polar_targets, reference_cells, scl_loss

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass
class LIOOutput:
    logits: Tensor
    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # "cls", "<stage>/oel", "<stage>/scl"


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    """The plain torchvision classifier that LIO trains and the pipeline deploys."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def stage_channels(backbone: nn.Module, stage: str) -> int:
    """Channels of a stage's output: the width of its last BatchNorm."""
    norms = [m for m in backbone.get_submodule(stage).modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class LIOModel(nn.Module):
    """Backbone + one (OEL, SCL) head pair per stage; `stages=()` is the plain baseline.

    With SCL on and OEL off (the paper's SCL-only ablation) the OEL head still gives the
    reference cell and the weights, but L_oel does not train it.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        num_classes: int = 1000,
        stages: tuple[str, ...] | list[str] = ("layer2", "layer3", "layer4"),
        alpha: float = 0.1,
        beta: float = 0.1,
        pool: int = 1,
        scl_channels: int = 512,
        oel: bool = True,
        scl: bool = True,
    ):
        super().__init__()
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        self.backbone = build_backbone(arch, num_classes)
        self.arch, self.alpha, self.beta, self.pool = arch, alpha, beta, pool
        self.use_oel, self.use_scl = oel, scl
        heads = list(stages) if (oel or scl) else []
        self.oel = nn.ModuleDict({s: OELHead(stage_channels(self.backbone, s)) for s in heads})
        self.scl = nn.ModuleDict(
            {s: SCLHead(stage_channels(self.backbone, s), scl_channels) for s in heads if scl}
        )
        self._feats: dict[str, Tensor] = {}
        self._capture = False
        for s in heads:
            self.backbone.get_submodule(s).register_forward_hook(partial(self._keep, s))

    @property
    def stages(self) -> list[str]:
        return list(self.oel.keys())

    def _keep(self, stage: str, module: nn.Module, args, output: Tensor) -> None:
        if self._capture:
            self._feats[stage] = output

    def _run(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self._feats, self._capture = {}, True
        try:
            logits = self.backbone(images)
        finally:
            self._capture = False
        feats, self._feats = self._feats, {}
        if self.pool > 1:
            feats = {s: F.avg_pool2d(f, self.pool) for s, f in feats.items()}
        return logits, feats

    def forward(self, images: Tensor, labels: Tensor | None = None, positives: Tensor | None = None):
        """Logits alone without labels (inference); an LIOOutput with labels (training)."""
        if labels is None:
            return self.backbone(images)
        logits, feats = self._run(images)
        parts = {"cls": F.cross_entropy(logits, labels)}
        loss = parts["cls"]
        if self.stages and positives is None:
            raise ValueError("LIO training needs the [B, P] positives index of the batch")
        for s in self.stages:
            f = feats[s]
            extent = self.oel[s](f)
            if self.use_oel:
                parts[f"{s}/oel"] = F.mse_loss(extent.float(), pseudo_mask(f, positives).float())
                loss = loss + self.alpha * parts[f"{s}/oel"]
            if self.use_scl:
                ref = reference_cells(extent)
                pred_dist, pred_angle = self.scl[s](f, ref)
                dist, angle = polar_targets(ref, f.shape[-1])
                parts[f"{s}/scl"] = scl_loss(pred_dist, pred_angle, dist, angle, F.relu(extent.detach()))
                loss = loss + self.beta * parts[f"{s}/scl"]
        return LIOOutput(logits, loss, parts)

    @torch.no_grad()
    def extent_maps(self, images: Tensor, positives: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Per stage, the pseudo mask M and the predicted extent m' (for figures and IoU)."""
        _, feats = self._run(images)
        return {s: (pseudo_mask(feats[s], positives), self.oel[s](feats[s])) for s in self.stages}

    @torch.no_grad()
    def extents(self, images: Tensor) -> dict[str, Tensor]:
        """Per stage, the predicted extent m' alone (needs no positives)."""
        _, feats = self._run(images)
        return {s: self.oel[s](feats[s]) for s in self.stages}

    def deployable(self) -> nn.Module:
        """The classification path: the plain torchvision backbone, heads left behind."""
        return self.backbone

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.oel.parameters(), *self.scl.parameters()]
