"""localise: reports/extent.json, the heads' maps against the true masks, one typed row per stage."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, ClassVar

from pipeline.artifacts.base import Artifact

#: the maps scored against the true masks, in table order: the trained ones (m' only with OEL),
#: then the references at the same N
MAPS = ("m'", "M", "all-ones", "centre prior", "random", "ceiling")


@dataclass(frozen=True)
class StageExtent:
    """One LIO stage's N x N maps against the true masks: means over the test images with masks."""

    cells: int  # N (each map is N x N)
    images: int
    iou: dict[str, float]  # map name (MAPS order) -> mean IoU
    pointing: float  # share of images whose SCL reference cell (argmax of m', or of M) lies on the object
    pointing_chance: float  # share of the object's cells: a random cell's rate

    @classmethod
    def upgrade(cls, value: Any) -> Any:
        """A row as extent.json and study.json held it before this shape (flat: "iou M", "N", ...)."""
        if not isinstance(value, dict) or "iou" in value:
            return value
        return {
            "cells": round(value["N"]),
            "images": round(value["images"]),
            "iou": {k.removeprefix("iou "): v for k, v in value.items() if k.startswith("iou ")},
            "pointing": value["pointing"],
            "pointing_chance": value["pointing chance"],
        }

    @staticmethod
    def mean(rows: list[StageExtent]) -> StageExtent:
        """Mean over runs (the study's seeds); a map's mean over the runs that scored it."""
        maps = [m for m in MAPS if any(m in r.iou for r in rows)]
        return StageExtent(
            cells=rows[0].cells,
            images=round(statistics.fmean(r.images for r in rows)),
            iou={m: statistics.fmean(r.iou[m] for r in rows if m in r.iou) for m in maps},
            pointing=statistics.fmean(r.pointing for r in rows),
            pointing_chance=statistics.fmean(r.pointing_chance for r in rows),
        )


@dataclass(frozen=True)
class Extent(Artifact):
    """Per LIO stage, IoU of m' and M with the true masks beside reference maps, and pointing."""

    STAGE: ClassVar[str] = "localise"
    stages: dict[str, StageExtent]
    train_mask_area: float | None = None
    threshold: float | None = None
    model_md5: str = ""  # DVC's hash of the trained model (models/lio.pt) these maps come from
