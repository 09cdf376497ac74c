"""The deployable artifacts' metadata: what every backend needs beside the weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from pipeline.backbone import build_backbone
from pipeline.errors import ArtifactError
from pipeline.io import load_torch, save_torch, write_json
from pipeline.paths import metadata, require


def deploy_meta(arch: str, classes: list[str], preprocess: dict) -> dict:
    return {
        "arch": arch,
        "num_classes": len(classes),
        "classes": classes,
        "preprocess": preprocess,
        "input": "input",
        "output": "logits",
    }


def write_deployable(weights: Path, meta_path: Path, state: dict, meta: dict) -> None:
    save_torch(state, weights)
    write_json(meta_path, meta)


def load_deployable(weights: Path) -> tuple[torch.nn.Module, dict]:
    """The plain torchvision model with the stripped weights, and its metadata."""
    weights = Path(weights)
    side = metadata(weights)
    for p in (weights, side):
        require(p, "strip")
    meta = read_metadata(side)
    model = build_backbone(meta["arch"], meta["num_classes"])
    state = load_torch(weights, "rerun `dvc repro strip`")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # the message lists the missing, unexpected and mis-shaped keys
        detail = " ".join(line.strip() for line in str(e).splitlines()[1:4])[:600]
        raise ArtifactError(
            f"{weights}: does not fit a {meta['arch']} with {meta['num_classes']} classes, as {side} says: {detail}; "
            "rerun `dvc repro strip` or pass the .json that belongs to this file"
        ) from e
    return model.eval(), meta


META_FIELDS = ("arch", "num_classes", "classes", "preprocess")


def read_metadata(path: Path) -> dict:
    """models/<arch>.json, checked: a clear error for a corrupt or incomplete file."""
    try:
        meta = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); rerun `dvc repro strip` to rewrite it") from e
    missing = [k for k in META_FIELDS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ArtifactError(f"{path}: missing {', '.join(missing)}; rerun `dvc repro strip` to rewrite it")
    if not {"resize", "crop"} <= set(meta["preprocess"]):
        raise ArtifactError(f"{path}: preprocess lacks resize/crop; rerun `dvc repro strip` to rewrite it")
    return meta


def torch_runner(model: torch.nn.Module, device: str = "cpu"):
    """(float32 NCHW numpy -> logits numpy) for a torch model, on its own copy of the model
    (`nn.Module.to` moves in place, so backends on two devices must not share one)."""
    net = copy.deepcopy(model).to(device).eval()

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run
