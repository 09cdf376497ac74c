"""Transforms as two named presets, after torchvision's references/classification."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from pipeline.artifacts.deployable import Preprocess
from pipeline.config.data import TransformConfig

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ClassificationPresetTrain(v2.Compose):
    """The paper's recipe at any size: resize, random rotation, random crop, flip."""

    def __init__(self, cfg: TransformConfig):
        steps = [v2.Resize(cfg.resize, antialias=True)]
        if cfg.rotation:
            steps.append(v2.RandomRotation(cfg.rotation))
        steps.append(v2.RandomCrop(cfg.crop))
        if cfg.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
        super().__init__(steps)


class ClassificationPresetEval(v2.Compose):
    """Resize, then centre crop: what the deployed model is fed."""

    def __init__(self, cfg: TransformConfig):
        super().__init__(
            [
                v2.Resize(cfg.resize, antialias=True),
                v2.CenterCrop(cfg.crop),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(MEAN, STD),
            ]
        )


def preprocessing(cfg: TransformConfig) -> Preprocess:
    """The eval preprocessing as plain values, stored beside every deployable model."""
    return Preprocess(resize=cfg.resize, crop=cfg.crop, mean=list(MEAN), std=list(STD))


def eval_preset(preprocess: Preprocess | dict) -> ClassificationPresetEval:
    """The eval preset from a deployable's stored preprocessing (models/<arch>.json), the
    one source of truth for export, report and predict."""
    spec = Preprocess.of(preprocess)
    return ClassificationPresetEval(TransformConfig(resize=spec.resize, crop=spec.crop))
