"""The plain torchvision classifier: what LIO trains, what strip proves, what ships."""

from __future__ import annotations

import torchvision
from torch import nn

from pipeline.config import ARCHS


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    """The plain torchvision classifier that LIO trains and the pipeline deploys."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
