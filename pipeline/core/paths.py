"""Where every artifact lives, in data-flow order: the one table of paths (dvc.yaml's outs
say the same), so that no stage needs another stage's module to find its inputs.

Paths are relative to the repository root, where DVC runs each stage.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.arch import PRECISIONS
from pipeline.core.errors import MissingArtifactError

# prepare
PREPARED = Path("data/prepared")
# train
TRAINED = Path("models/lio.pt")
CHECKPOINTS = Path("checkpoints")
LIVE = Path("dvclive")
# strip
PARITY = Path("reports/parity.json")
# export: the one table of ONNX variants (precision -> file)
ONNX_DIR = Path("models/onnx")
ONNX = {p: ONNX_DIR / ("model.onnx" if p == "fp32" else f"model.{p}.onnx") for p in PRECISIONS}
FUSED = ONNX_DIR / "model.uint8.onnx"  # export.fuse_preprocess: uint8 NHWC in, normalisation inside
EXPORT_REPORT = Path("reports/export.json")
# engine
ENGINE_DIR = Path("models/engine")
ENGINE = ENGINE_DIR / "model.engine"
ENGINE_INFO = ENGINE_DIR / "engine.json"
TIMING_CACHE_DIR = Path("models/timing-cache")  # persists between builds
TIMING_CACHE = TIMING_CACHE_DIR / "timing.cache"
TRITON = Path("models/triton")  # a Triton model repository for NGC's container (native backends)
TRITON_CPU = Path("models/triton_cpu")  # the repository `lio serve` runs on the bundled server (Python backend)
# runtime: the CPU runtime, chosen among candidates gated and timed on this machine
RUNTIME = Path("reports/runtime.json")
SERVING = Path("reports/serving.json")  # benchmarks/serve.py: the bundled server under load (not a stage)
# score: every backend scored and timed
SCORES = Path("reports/scores.json")  # the renderer's input
METRICS = Path("reports/metrics.json")  # DVC metrics: test top-1 and every backend's numbers
LATENCY = Path("reports/latency.json")
PER_CLASS = Path("reports/per_class.json")
CONFUSION = Path("reports/confusion.json")
# localise: the heads' maps against the true masks
EXTENT = Path("reports/extent.json")
LOCALISATION = Path("reports/localisation.json")  # DVC plot rows
MASKS = Path("reports/masks.png")
# report: rendered from the JSON above
STUDY = Path("reports/study.json")  # written by `lio study collect`, read by the model card
REPORT = Path("reports/report.md")
MODEL_CARD = Path("models/MODEL_CARD.md")


def stripped(arch: str) -> Path:
    """The stripped plain model's weights; its metadata is the .json beside it."""
    return Path("models") / f"{arch}.pt"


def metadata(weights: Path) -> Path:
    return Path(weights).with_suffix(".json")


def require(path: Path, stage: str) -> Path:
    """`path` if it exists, else MissingArtifactError naming the stage that writes it."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(f"{path} not found: run `dvc repro {stage}` (or `lio {stage}`) first")
    return path
