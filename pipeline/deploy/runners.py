"""The deployable artifacts' metadata: what every backend needs beside the weights."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pipeline.artifacts.deployable import Deployable
from pipeline.backbone import build_backbone
from pipeline.core.errors import ArtifactError
from pipeline.core.paths import metadata, require
from pipeline.weights import load_torch


def load_deployable(weights: Path) -> tuple[torch.nn.Module, Deployable]:
    """The plain torchvision model with the stripped weights, and its metadata."""
    weights = Path(weights)
    side = metadata(weights)
    for p in (weights, side):
        require(p, "strip")
    meta = Deployable.load(side)
    model = build_backbone(meta.arch, meta.num_classes)
    state = load_torch(weights, "rerun `dvc repro strip`")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the message lists the missing, unexpected and mis-shaped keys
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])[:600]
        raise ArtifactError(
            f"{weights}: does not fit a {meta.arch} with {meta.num_classes} classes, as {side} says: {detail}; "
            "rerun `dvc repro strip` or pass the .json that belongs to this file"
        ) from e
    return model.eval(), meta


def torch_runner(model: torch.nn.Module, device: str = "cpu"):
    """(float32 NCHW numpy -> logits numpy) for a torch model, on its own copy of the model
    (`nn.Module.to` moves in place, so backends on two devices must not share one)."""
    net = copy.deepcopy(model).to(device).eval()

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run
