"""Top-k predictions from any deployable artifact: .pt, .onnx or .engine.

Each artifact carries its class names and preprocessing: the .pt in the .json beside it,
the .onnx in its metadata, the .engine in the engine.json beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import ArtifactError
from pipeline.data.dataset import ImageError
from pipeline.data.readers import IMAGE_SUFFIXES
from pipeline.deploy.preprocess import MAX_PIXELS, preprocess


def load_predictor(path: Path):
    """(run(np)->logits, metadata) for a model file, by its suffix."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such model file")
    if path.suffix == ".pt":
        from pipeline.deploy.runners import load_deployable, torch_runner

        model, meta = load_deployable(path)

        return torch_runner(model), meta
    if path.suffix == ".onnx":
        from pipeline.deploy import onnx_runtime

        meta = onnx_runtime.read_meta(path)
        sess = onnx_runtime.session(path, "cuda" if torch.cuda.is_available() else "cpu")
        return (lambda x: onnx_runtime.run(sess, x)), meta
    if path.suffix == ".engine":
        from pipeline.artifacts.engine import EngineInfo
        from pipeline.deploy.engine import EngineRunner

        info = path.with_name("engine.json")
        if not info.exists():
            raise ArtifactError(f"{info} not found: an engine needs the engine.json written beside it by `lio engine`")
        return EngineRunner(path, info), EngineInfo.load(info)
    raise ArtifactError(f"{path}: unknown model type {path.suffix!r}; use a .pt, .onnx or .engine file")


def image_paths(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the images inside them (sorted)."""
    out = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    if not out:
        raise ArtifactError(f"no images found in {', '.join(map(str, inputs))}")
    return out


def predict(
    model_path: Path,
    inputs: list[Path],
    k: int = 5,
    strict: bool = False,
    max_pixels: int = MAX_PIXELS,
    runner=None,
) -> list[dict]:
    """Top-k classes per image; an unreadable image, or one claiming more than `max_pixels`, gets
    {"image", "error"} instead (or, with `strict`, stops everything with its ImageError). `runner`: an
    ONNX file's (numpy -> logits) on a runtime chosen by the caller (default: by the file's suffix)."""
    if runner is not None:
        from pipeline.deploy.onnx_runtime import read_meta

        run, meta = runner, read_meta(model_path)
    else:
        run, meta = load_predictor(model_path)
    results: list[dict[str, Any]] = []
    for path in image_paths(inputs):
        try:
            x = preprocess(path, meta.preprocess, max_pixels)
        except ImageError as e:
            if strict:
                raise
            results.append({"image": str(path), "error": str(e)})
            continue
        probs = torch.softmax(torch.from_numpy(np.asarray(run(x), dtype=np.float32)), dim=1)[0]
        top = probs.topk(min(k, len(probs)))
        results.append(
            {
                "image": str(path),
                "top": [
                    {"class": meta.classes[i], "probability": float(p)}
                    for p, i in zip(top.values.tolist(), top.indices.tolist())
                ],
            }
        )
    return results
