"""triton: the repositories' summaries: models/triton/preprocess.json (`ClientGuide`, what a client of
NGC's Triton container sends to each model) and models/triton_cpu/files.json (`Repository`, what
`lio serve` serves and each file's hash)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pipeline.artifacts.base import Artifact
from pipeline.artifacts.deployable import Preprocess
from pipeline.core.errors import ArtifactError
from pipeline.core.io import sha256


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


@dataclass(frozen=True)
class Repository(Artifact):
    """What a repository serves: its models, the CPU candidate behind `lio_cpu`, and each file's hash."""

    STAGE: ClassVar[str] = "triton"
    models: list[str]
    candidate: str
    max_batch: int
    files: dict[str, str]  # path inside the repository -> SHA-256

    def verify(self, root: Path) -> None:
        """Every listed file present and unchanged; ArtifactError naming the first that is not."""
        for name, digest in self.files.items():
            path = root / name
            if not path.exists():
                raise ArtifactError(f"{path}: missing from the model repository; rerun `dvc repro triton`")
            if sha256(path) != digest:
                raise ArtifactError(
                    f"{path}: changed on disk since `lio triton` wrote it (SHA-256 differs); refusing to serve it. "
                    "Restore it with `dvc checkout` or rerun `dvc repro triton`"
                )
