"""The plain torchvision classifier: what LIO trains, what strip proves, what ships."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from pipeline.core.arch import ARCHS, STAGES, STRIDES, stage_size
from pipeline.core.errors import TrainingError
from pipeline.weights import load_torch

__all__ = ["ARCHS", "STAGES", "STRIDES", "build_backbone", "load_pretrained", "stage_size"]


def build_backbone(arch: str, num_classes: int, zero_init_residual: bool = False) -> nn.Module:
    """The plain torchvision classifier that LIO trains and the pipeline deploys. `zero_init_residual`
    (torchvision's) starts every residual block as the identity: an initialisation only, the
    architecture is the same."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return torchvision.models.get_model(
        arch, weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual
    )


def pretrained_path(arch: str, pretrained: str) -> Path:
    """Where the weights must be: torchvision's file in the local hub cache, or a path."""
    if pretrained != "imagenet":
        return Path(pretrained)
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def load_pretrained(backbone: nn.Module, arch: str, pretrained: str) -> None:
    """Backbone weights from a local file; the classifier is kept only if its shape fits."""
    path = pretrained_path(arch, pretrained)
    if not path.exists():
        if pretrained == "imagenet":
            raise TrainingError(
                f"model.pretrained: imagenet needs torchvision's {arch} weights at {path} and nothing can be "
                f"downloaded here; copy the file {path.name} into {path.parent} (or set model.pretrained to a path)"
            )
        raise TrainingError(f"model.pretrained: {path} not found")
    state = load_torch(path, "point model.pretrained at a valid state dict")
    state = state.get("state_dict", state)
    own = backbone.state_dict()
    for key in ("fc.weight", "fc.bias"):
        if key in state and key in own and state[key].shape != own[key].shape:
            del state[key]  # another class count: fine-tuning starts a new classifier
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if wrong or shapes:
        raise TrainingError(
            f"model.pretrained: {path} does not fit {arch}: "
            f"{len(wrong)} missing/unexpected keys (e.g. {wrong[:3]}), "
            f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})"
        )
