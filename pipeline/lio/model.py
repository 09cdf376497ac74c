"""LIOModel: an unmodified torchvision classifier plus training-only OEL and SCL heads.

The stage feature maps are read with forward hooks, so the backbone's modules and its
forward are exactly torchvision's; in eval mode (or without labels) the model is the
backbone alone, which is what the strip stage proves and ships.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.backbone import STAGES, build_backbone
from pipeline.lio.oel import OELHead, PairIndex, pair_index, pseudo_mask
from pipeline.lio.scl import SCLHead, polar_targets, reference_cells, scl_loss

MASK_SOURCES = ("pseudo", "gt")
SCL_WEIGHTS = ("extent", "binary")


@dataclass(frozen=True)
class StageMaps:
    """One stage's N x N maps [B, N, N]: the pseudo mask M and OEL's predicted extent m' (None without OEL)."""

    M: Tensor
    predicted: Tensor | None = None

    @property
    def reference(self) -> Tensor:
        """The map SCL takes its reference cell from: m' with OEL, else M."""
        return self.M if self.predicted is None else self.predicted

    def named(self) -> dict[str, Tensor]:
        """The trained maps by their names in the paper and in reports (m' first, as tables show them)."""
        return {"m'": self.predicted, "M": self.M} if self.predicted is not None else {"M": self.M}


@dataclass
class LIOOutput:
    logits: Tensor
    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)  # "cls", "<stage>/oel", "<stage>/scl"


def gt_target(masks: Tensor, n: int) -> Tensor:
    """The "w/ GM" OEL target: true masks [B, H, W] average-pooled to [B, N, N], float32."""
    with torch.autocast(masks.device.type, enabled=False):
        return F.adaptive_avg_pool2d(masks.float().unsqueeze(1), n).squeeze(1)


def stage_channels(backbone: nn.Module, stage: str) -> int:
    """Channels of a stage's output: the width of its last BatchNorm."""
    norms = [m for m in backbone.get_submodule(stage).modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class LIOModel(nn.Module):
    """Backbone + one (OEL, SCL) head pair per stage; `stages=()` is the plain baseline.

    `mask_source="gt"` trains OEL against the true mask pooled to N x N (the paper's
    "LIO w/ GM") instead of the pseudo mask M. With SCL on and OEL off (the SCL-only
    ablation) there is no OEL head: SCL takes its reference cell and weights from M, which
    needs no training (an untrained head would give a fixed random projection instead).
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
        mask_source: str = "pseudo",
        target_grad: bool = True,
        scl_weights: str = "binary",
        zero_init_residual: bool = False,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}: choose from {', '.join(STAGES)}")
        if pool < 1:
            raise ValueError(f"pool must be >= 1, got {pool}")
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {mask_source!r}")
        if scl_weights not in SCL_WEIGHTS:
            raise ValueError(f"scl_weights must be one of {SCL_WEIGHTS}, got {scl_weights!r}")
        self.backbone = build_backbone(arch, num_classes, zero_init_residual)
        self.label_smoothing = label_smoothing  # of the classification loss; training only
        self.arch, self.alpha, self.beta, self.pool = arch, alpha, beta, pool
        self.use_oel, self.use_scl, self.mask_source = oel, scl, mask_source
        self.target_grad, self.scl_weights = target_grad, scl_weights
        self._stages = list(stages) if (oel or scl) else []
        self.oel = nn.ModuleDict({s: OELHead(stage_channels(self.backbone, s)) for s in self._stages if oel})
        self.scl = nn.ModuleDict(
            {s: SCLHead(stage_channels(self.backbone, s), scl_channels) for s in self._stages if scl}
        )
        self._feats: dict[str, Tensor] = {}
        self._capture = False
        for s in self._stages:
            self.backbone.get_submodule(s).register_forward_hook(partial(self._keep, s))

    @classmethod
    def from_config(cls, lio, arch: str, num_classes: int, **training) -> LIOModel:
        """From a config's `lio` section (a dataclass such as pipeline.config.LIOConfig, or a
        dict); fields that configure the batch rather than the model (P) are left to the sampler.
        `training`: the recipe's settings that shape only training (zero_init_residual, label_smoothing)."""
        lio = lio if isinstance(lio, dict) else dataclasses.asdict(lio)
        own = inspect.signature(cls.__init__).parameters
        kept = {k: v for k, v in lio.items() if k in own and k not in ("arch", "num_classes")}
        return cls(arch, num_classes, **kept, **training)

    @property
    def stages(self) -> list[str]:
        return list(self._stages)

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

    def forward(
        self,
        images: Tensor,
        labels: Tensor | None = None,
        positives: Tensor | PairIndex | None = None,
        masks: Tensor | None = None,
    ):
        """Logits alone without labels (inference); an LIOOutput with labels (training).

        positives: long [B, P] batch indices (docs/method.md, batches), or their `pair_index`
        (what a compiled step takes: no data-dependent shapes inside); masks: the true object
        masks [B, H, W] of the batch, needed only with mask_source="gt".
        """
        if labels is None:
            return self.backbone(images)
        logits, feats = self._run(images)
        parts = {"cls": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)}
        loss = parts["cls"]
        if not self.stages:
            return LIOOutput(logits, loss, parts)
        if positives is None:
            raise ValueError("LIO training needs the [B, P] positives index of the batch")
        if self.use_oel and self.mask_source == "gt" and masks is None:
            raise ValueError("mask_source='gt' needs the true masks of the batch")
        if not isinstance(positives, PairIndex):
            positives = pair_index(positives)
        for s in self.stages:
            f = feats[s]
            extent = self.oel[s](f) if self.use_oel else None
            if extent is not None:
                target = gt_target(masks, f.shape[-1]) if masks is not None and self.mask_source == "gt" else None
                target = pseudo_mask(f, positives, grad=self.target_grad) if target is None else target
                parts[f"{s}/oel"] = F.mse_loss(extent.float(), target)
                loss = loss + self.alpha * parts[f"{s}/oel"]
            if self.use_scl:
                guide = (extent if extent is not None else pseudo_mask(f, positives)).detach().float()
                ref = reference_cells(guide)
                pred_dist, pred_angle = self.scl[s](f, ref)
                dist, angle = polar_targets(ref, f.shape[-1])
                parts[f"{s}/scl"] = scl_loss(pred_dist, pred_angle, dist, angle, self._scl_weights(guide))
                loss = loss + self.beta * parts[f"{s}/scl"]
        return LIOOutput(logits, loss, parts)

    def _scl_weights(self, guide: Tensor) -> Tensor:
        """relu(m') as in the paper, or the released code's binary mask m' > mean(m') per image."""
        if self.scl_weights == "binary":
            return (guide > guide.flatten(1).mean(1).view(-1, 1, 1)).float()
        return F.relu(guide)

    @torch.no_grad()
    def extent_maps(self, images: Tensor, positives: Tensor | PairIndex) -> dict[str, StageMaps]:
        """Per stage, the pseudo mask M and (OEL only) the predicted extent m'."""
        _, feats = self._run(images)
        return {
            s: StageMaps(pseudo_mask(feats[s], positives), self.oel[s](feats[s]).float() if self.use_oel else None)
            for s in self.stages
        }

    def plain(self) -> nn.Module:
        """The classification path: the plain torchvision backbone, heads left behind."""
        return self.backbone

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.oel.parameters(), *self.scl.parameters()]
