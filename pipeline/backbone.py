"""The plain torchvision classifier: what LIO trains, what strip proves, what ships."""

from __future__ import annotations

import torchvision
from torch import nn

#: torchvision classifiers LIO can train (each has layer1..layer4 and an `fc` head).
ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2")
#: the stages whose output maps LIO's heads can read, and each one's stride from the input
STAGES = ("layer1", "layer2", "layer3", "layer4")
STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    """The plain torchvision classifier that LIO trains and the pipeline deploys."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def stage_size(stage: str, crop: int) -> int:
    """Side of a stage's output map for a crop x crop input: every stride-2 step rounds up."""
    size = crop
    for _ in range(STRIDES[stage].bit_length() - 1):
        size = -(-size // 2)
    return size
