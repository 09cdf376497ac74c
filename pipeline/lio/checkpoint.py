"""The trained model's file (models/lio.pt): written by train, read by strip, localise and the
study, always through `TrainedModel`, by attribute.

It keeps the weights with everything they were trained with (as Lightning's save_hyperparameters
does): the classes, the preprocessing, the typed settings of every section the train stage reads,
and the run's summary. On disk it is a plain dict of tensors and builtins, so
`torch.load(path, weights_only=True)` (pipeline/weights.py) reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.artifacts.deployable import Preprocess
from pipeline.artifacts.training import TrainingSummary
from pipeline.config.schema import ConfigError, build, to_dict
from pipeline.config.train import TrainParams
from pipeline.core.errors import ArtifactError, MissingArtifactError
from pipeline.lio.model import LIOModel
from pipeline.weights import load_torch, save_torch


@dataclass(frozen=True)
class TrainedModel:
    """models/lio.pt: the LIOModel's weights (heads included) and how they were made."""

    state_dict: dict[str, torch.Tensor]
    num_classes: int
    classes: list[str]
    preprocess: Preprocess
    training: TrainParams  # seed, data, model, lio, train, as the run had them (`Deployable.training` too)
    summary: TrainingSummary

    @property
    def arch(self) -> str:
        return self.training.model.arch

    def model(self) -> LIOModel:
        """The trained LIOModel, heads included, in eval mode."""
        model = LIOModel.from_config(self.training.lio, self.arch, self.num_classes)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise ArtifactError(f"the weights do not fit a {self.arch} with these LIO heads ({_first(e)})") from e
        return model.eval()

    @classmethod
    def of(cls, model: nn.Module, training: TrainParams, classes: list[str], preprocess: Preprocess, summary):
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        return cls(state, len(classes), list(classes), preprocess, training, summary)

    def save(self, path: Path) -> None:
        save_torch(
            {
                "state_dict": self.state_dict,
                "num_classes": self.num_classes,
                "classes": self.classes,
                "preprocess": dataclasses.asdict(self.preprocess),
                "training": to_dict(self.training),
                "metrics": self.summary.to_json(),
            },
            path,
        )

    @classmethod
    def load(cls, path: Path) -> tuple[TrainedModel, LIOModel]:
        """The file and its model (built once, which checks that the weights fit)."""
        path = Path(path)
        if not path.exists():
            raise MissingArtifactError(f"{path} not found: run `dvc repro train` (or `lio train`) first")
        blob = load_torch(path, "rerun `dvc repro train`")
        try:
            trained = cls(
                state_dict=blob["state_dict"],
                # a lio.pt from before the fifth pass holds `model.num_classes` and `settings`
                num_classes=blob["num_classes"] if "num_classes" in blob else blob["model"]["num_classes"],
                classes=blob["classes"],
                preprocess=Preprocess.of(blob["preprocess"]),
                training=build(TrainParams, blob.get("training", blob.get("settings")), str(path), "training"),
                summary=TrainingSummary.from_json(blob["metrics"], f"{path}: metrics"),
            )
            model = trained.model()
        except (KeyError, TypeError, ConfigError, ArtifactError) as e:
            raise ArtifactError(
                f"{path}: not a model written by `lio train` ({_first(e)}); rerun `dvc repro train`"
            ) from e
        return trained, model


def _first(e: Exception) -> str:
    return " ".join(line.strip() for line in str(e).splitlines()[:3])[:600]
