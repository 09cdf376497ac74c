"""The deployable artifacts' metadata: what every backend needs beside the weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import ArtifactError
from pipeline.io import atomic_path, write_json
from pipeline.lio.model import build_backbone


def deploy_meta(arch: str, classes: list[str], preprocess: dict) -> dict:
    return {"arch": arch, "num_classes": len(classes), "classes": classes, "preprocess": preprocess,
            "input": "input", "output": "logits"}


def write_deployable(weights: Path, meta_path: Path, state: dict, meta: dict) -> None:
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    write_json(meta_path, meta)


def meta_path(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def load_deployable(weights: Path) -> tuple[torch.nn.Module, dict]:
    """The plain torchvision model with the stripped weights, and its metadata."""
    weights = Path(weights)
    side = meta_path(weights)
    for p in (weights, side):
        if not p.exists():
            raise FileNotFoundError(f"{p} not found: run `lio strip` (or `dvc repro strip`) first")
    meta = json.loads(side.read_text())
    model = build_backbone(meta["arch"], meta["num_classes"])
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise ArtifactError(f"{weights}: not a valid {meta['arch']} state dict ({str(e).splitlines()[0]})") from e
    return model.eval(), meta
