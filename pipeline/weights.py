"""torch files (models/lio.pt, checkpoints, the deployable's state dict): saved atomically, loaded
with `weights_only=True`, and a broken file named in one line. Kept out of pipeline/core, which
imports no torch."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from pipeline.core.errors import ArtifactError
from pipeline.core.io import atomic_path, output_error


def save_torch(obj, path: str | Path) -> None:
    """torch.save, atomically; a full disk (torch reports "unexpected pos") becomes OutputError. Saved
    through an open file, so the archive's inner folder is torch's fixed "archive", not the temporary
    file's random name: the same weights give the same bytes (and DVC the same hash) on every run."""
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as e:  # PytorchStreamWriter wraps the OS error
            raise output_error(Path(path), e) from e


def load_torch(path: str | Path, fix: str):
    """torch.load(weights_only=True); an unreadable file raises ArtifactError naming it and the fix."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise ArtifactError(f"{path}: cannot be read, it is truncated or corrupt ({reason}); {fix}") from e
