"""strip: the deployable's metadata, models/<arch>.json (and inside every ONNX file)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.artifacts.base import Artifact, typed
from pipeline.artifacts.training import TrainingSummary
from pipeline.config.train import TrainParams


@dataclass(frozen=True)
class Preprocess:
    """What a client does to an image: decode RGB, resize the shorter side, centre-crop, scale to
    [0, 1], normalise per channel, NCHW float32."""

    resize: int
    crop: int
    mean: list[float]
    std: list[float]
    layout: str = "NCHW RGB float32"

    @classmethod
    def of(cls, spec: Preprocess | dict) -> Preprocess:
        """A client's preprocess.json entry (a dict) or the typed value, as the typed value."""
        return spec if isinstance(spec, Preprocess) else typed(cls, spec)


@dataclass(frozen=True)
class Deployable(Artifact):
    """models/<arch>.json beside the stripped weights: what every backend needs, and how the model
    was trained (`training`: the typed params sections it was trained with, `summary`: its results;
    None in a file a client wrote by hand)."""

    STAGE: ClassVar[str] = "strip"
    arch: str
    num_classes: int
    classes: list[str]
    preprocess: Preprocess
    input: str = "input"
    output: str = "logits"
    training: TrainParams | None = None
    summary: TrainingSummary | None = None
