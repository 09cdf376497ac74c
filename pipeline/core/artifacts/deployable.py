"""strip: the deployable's metadata, models/<arch>.json (and inside every ONNX file)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.core.artifacts.base import Artifact, typed
from pipeline.core.artifacts.training import TrainingSummary


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
    was trained (`training`: the params sections it was trained with, `summary`: its results)."""

    STAGE: ClassVar[str] = "strip"
    arch: str
    num_classes: int
    classes: list[str]
    preprocess: Preprocess
    input: str = "input"
    output: str = "logits"
    training: dict[str, Any] = field(default_factory=dict)
    summary: TrainingSummary | None = None
