"""localise: reports/extent.json, the heads' maps against the true masks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.artifacts.base import Artifact

#: the maps scored against the true masks, in table order: the trained ones (m' only with OEL),
#: then the references at the same N; each is stored as IOU + name
MAPS = ("m'", "M", "all-ones", "centre prior", "random", "ceiling")
IOU = "iou "
#: every score the localise stage gives per stage, beside N and the image count
SCORES = (*(IOU + m for m in MAPS), "pointing", "pointing chance")


@dataclass(frozen=True)
class Extent(Artifact):
    """Per LIO stage, IoU of m' and M with the true masks beside reference maps, and pointing."""

    STAGE: ClassVar[str] = "localise"
    stages: dict[str, dict[str, Any]]
    train_mask_area: float | None = None
    threshold: float | None = None
    model_md5: str = ""  # DVC's hash of the trained model (models/lio.pt) these maps come from
