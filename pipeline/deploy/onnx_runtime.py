"""ONNX Runtime sessions that say which provider really runs them.

onnxruntime-gpu lists CUDA and TensorRT providers even without a GPU, and a CUDA session
silently falls back to the CPU; so the provider reported is `session.get_providers()[0]`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pipeline.artifacts.deployable import Deployable
from pipeline.core.errors import ArtifactError
from pipeline.core.machine import threads

META_KEY = "lio"


def session(path: str | Path | bytes, device: str = "cpu") -> ort.InferenceSession:
    """A session on the CPU, or on CUDA when asked and present (checked after creation);
    `path` may be a serialized model. Its threads: `pipeline.core.machine.threads`, as every CPU runtime's."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads()
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options, providers=providers)
    except Exception as e:  # ORT raises several private exception types for bad files
        where = "<in-memory model>" if isinstance(path, bytes) else path
        raise ArtifactError(f"{where}: not a loadable ONNX model ({str(e).splitlines()[0][:200]})") from e


def provider(sess: ort.InferenceSession) -> str:
    return sess.get_providers()[0]


def run(sess: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.asarray(sess.run(None, {name: images.astype(np.float32)})[0], dtype=np.float32)


def runner(sess: ort.InferenceSession):
    """(float32 NCHW numpy -> logits numpy) on `sess`: what `pipeline.data.dataset.run_batches` takes."""
    return lambda images: run(sess, images)


def write_meta(model: onnx.ModelProto, meta: Deployable) -> None:
    """The deployable's metadata (class names, preprocessing, training settings) travels inside the ONNX file."""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta.to_json())


def read_meta(path: str | Path) -> Deployable:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ArtifactError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0][:200]})") from e
    for entry in model.metadata_props:
        if entry.key == META_KEY:
            return Deployable.from_json(json.loads(entry.value), f"{path}: metadata {META_KEY!r}")
    raise ArtifactError(
        f"{path}: has no '{META_KEY}' metadata (class names, preprocessing); export it with `lio export`"
    )
