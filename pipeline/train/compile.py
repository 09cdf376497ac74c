"""`train.compile`: the training forward under torch.compile, with eager as the fallback.

The LIO step compiles as one graph (`fullgraph=True`): the positives arrive as a pair index
built on the host (pipeline/lio/oel.py), so nothing in the step has a data-dependent shape or
waits for the device. Only the training forward is wrapped; evaluation and the deployable
call the plain torchvision module, and strip's proof is untouched.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def wants_compile(setting: str, device: torch.device) -> bool:
    """auto compiles on CUDA only: on a 2-core CPU the compile time outweighs the gain (docs/measured-log.md)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


class CompiledStep(nn.Module):
    """Calls `torch.compile(module, fullgraph=True)`; if the first call fails to compile (no
    compiler, an unsupported op on this machine), warns in one line and runs eager from then on.
    Once a compiled call has succeeded, errors propagate: they are the step's, not the compiler's."""

    def __init__(self, module: nn.Module, **options):
        super().__init__()
        self.module = module
        # not a registered submodule (its parameters are `module`'s, listed once); one static graph per batch
        # size (the sampler yields at most two: full batches and a shorter last one)
        self._compiled: nn.Module | None
        object.__setattr__(self, "_compiled", torch.compile(module, fullgraph=True, dynamic=False, **options))
        self._proven = False

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, *args, **kwargs):
        if self._compiled is None:
            return self.module(*args, **kwargs)
        if self._proven:
            return self._compiled(*args, **kwargs)
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure falls back; eager re-raises real errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warnings.warn(f"train.compile: torch.compile failed ({first[:200]}); training eager", stacklevel=2)
            object.__setattr__(self, "_compiled", None)
            return self.module(*args, **kwargs)
        self._proven = True
        return out


def unwrap(model: nn.Module) -> nn.Module:
    """The LIOModel inside DistributedDataParallel and CompiledStep wrappers."""
    while isinstance(model, (CompiledStep, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model
