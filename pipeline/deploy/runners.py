"""The backends the deployed model runs on here, as Polygraphy's runners are: one callable each
(float32 NCHW numpy -> logits numpy) with its name, file and device; and the deployable's loader."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
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


@dataclass
class Backend:
    """One way of running the deployed model here: a name for the tables, a numpy -> numpy call,
    the file it runs, the device or provider that really runs it, and how to wait for it."""

    name: str
    run: Callable[[np.ndarray], np.ndarray]
    file: Path
    device: str
    sync: Callable[[], Any] = lambda: None


def onnx_backend(name: str, path: Path, device: str = "cpu") -> Backend:
    """An ONNX file on ONNX Runtime's best provider for `device` here."""
    from pipeline.deploy import onnx_runtime

    sess = onnx_runtime.session(path, device)
    return Backend(name, partial(onnx_runtime.run, sess), Path(path), onnx_runtime.provider(sess))


def torch_runner(model: torch.nn.Module, device: str = "cpu"):
    """(float32 NCHW numpy -> logits numpy) for a torch model, on its own copy of the model
    (`nn.Module.to` moves in place, so backends on two devices must not share one)."""
    net = copy.deepcopy(model).to(device).eval()

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run
