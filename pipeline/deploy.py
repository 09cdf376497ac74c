"""The deployable artifacts' metadata: what every backend needs beside the weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pipeline.errors import ArtifactError
from pipeline.io import atomic_path, write_json
from pipeline.backbone import build_backbone
from pipeline.paths import metadata, require


def deploy_meta(arch: str, classes: list[str], preprocess: dict) -> dict:
    return {"arch": arch, "num_classes": len(classes), "classes": classes, "preprocess": preprocess,
            "input": "input", "output": "logits"}


def write_deployable(weights: Path, meta_path: Path, state: dict, meta: dict) -> None:
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    write_json(meta_path, meta)


def load_deployable(weights: Path) -> tuple[torch.nn.Module, dict]:
    """The plain torchvision model with the stripped weights, and its metadata."""
    weights = Path(weights)
    side = metadata(weights)
    for p in (weights, side):
        require(p, "strip")
    meta = json.loads(side.read_text())
    model = build_backbone(meta["arch"], meta["num_classes"])
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as e:
        raise ArtifactError(f"{weights}: not a valid {meta['arch']} state dict ({str(e).splitlines()[0]})") from e
    return model.eval(), meta


def torch_runner(model: torch.nn.Module, device: str = "cpu"):
    """(float32 NCHW numpy -> logits numpy) for a torch model, on its own copy of the model
    (`nn.Module.to` moves in place, so backends on two devices must not share one)."""
    import copy

    net = copy.deepcopy(model).to(device).eval()

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).to(device)).float().cpu().numpy()

    run.model = net
    return run
