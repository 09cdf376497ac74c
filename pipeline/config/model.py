"""params.yaml `model`: the torchvision architecture and its starting weights; the strip stage's view."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.config.schema import Params, need
from pipeline.core.arch import ARCHS


@dataclass
class ModelConfig:
    arch: str = "resnet50"
    pretrained: str = "none"  # none | imagenet | path to a state dict
    zero_init_residual: bool = False  # torchvision's: each residual block starts as the identity (from scratch)

    def check(self, where: str) -> None:
        need(self.arch in ARCHS, where, "model.arch", f"{self.arch!r} is unknown; use one of {', '.join(ARCHS)}")


@dataclass
class ArchParams(Params):
    """The stages that need only `model.arch`, to find the deployable: strip, and the report renderer."""

    model: ModelConfig = field(default_factory=ModelConfig)
