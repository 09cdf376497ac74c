"""triton: models/triton/preprocess.json, what a client of NGC's Triton container sends to each model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pipeline.artifacts.base import Artifact
from pipeline.artifacts.deployable import Preprocess


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int | str]  # "batch" first


@dataclass(frozen=True)
class Output:
    name: str
    classes: int


@dataclass(frozen=True)
class BytesInput:
    """The `lio` ensemble: encoded image bytes in, labelled logits out."""

    model: str
    input: str
    datatype: str
    output: str
    top_k: str


@dataclass(frozen=True)
class FusedInput:
    """The fused-preprocessing model: resized and cropped uint8 NHWC in."""

    model: str
    datatype: str
    shape: list[int | str]
    client: str


@dataclass(frozen=True)
class ClientGuide(Artifact):
    """The repository's summary: the models it serves, what each takes, and what the TensorRT plan needs."""

    STAGE: ClassVar[str] = "triton"
    models: list[str]
    input: Tensor
    output: Output
    preprocess: Preprocess
    steps: list[str]
    client_function: str
    bytes_input: BytesInput | None
    fused_input: FusedInput | None
    tensorrt: str | None
    tensorrt_plan_needs: str | None
    tensorrt_not_served: str | None
