"""The trained model's file (models/lio.pt): written by train, read by strip, report and the study.

It keeps the model's identity (`model`: arch, classes, weights origin) apart from the method's
settings (`lio`), so loading needs no list of names: the `lio` section goes to
`LIOModel.from_config` as it was trained.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.core.errors import ArtifactError, MissingArtifactError
from pipeline.lio.model import LIOModel
from pipeline.weights import load_torch, save_torch


def save_trained(path: Path, model: nn.Module, *, model_info: dict, lio: dict, **extra) -> None:
    """Weights on the CPU, `model` (arch, num_classes, ...), `lio` (the method's settings) and
    whatever else the caller records (classes, preprocess, metrics)."""
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    save_torch({"state_dict": state, "model": model_info, "lio": lio, **extra}, path)


def load_trained(path: Path) -> tuple[LIOModel, dict]:
    """The trained LIOModel (heads included, eval mode) and the file's contents."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path} not found: run `dvc repro train` (or `lio train`) first")
    blob = load_torch(path, "rerun `dvc repro train`")
    try:
        info = blob["model"]
        model = LIOModel.from_config(blob["lio"], info["arch"], info["num_classes"])
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        detail = " ".join(line.strip() for line in str(e).splitlines()[:3])[:600]
        raise ArtifactError(f"{path}: not a model written by `lio train` ({detail}); rerun `dvc repro train`") from e
    return model.eval(), blob
