"""`lio engine`: models/onnx/model.<precision>.onnx -> models/engine/{model.engine, engine.json}.

`engine.required: auto` builds where TensorRT and a CUDA GPU exist and otherwise records
why not (built: false) and succeeds; `true` fails instead; `false` never builds.
"""
from pathlib import Path

import click

from pipeline import onnx_runtime
from pipeline.engine import EngineError, build, tensorrt_or_reason, write_info
from stages.common import with_config
from stages.export import ONNX

ENGINE_DIR = Path("models/engine")
ENGINE = ENGINE_DIR / "model.engine"
INFO = ENGINE_DIR / "engine.json"
TIMING_CACHE = Path("models/timing-cache/timing.cache")  # persists between builds


@click.command("engine")
@with_config
def command(cfg):
    """Build a strongly typed TensorRT engine from the chosen ONNX variant."""
    e = cfg.engine
    onnx_path = ONNX[e.precision]
    meta = onnx_runtime.read_meta(onnx_path)
    ENGINE.unlink(missing_ok=True)  # never leave an engine from other settings behind
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    TIMING_CACHE.parent.mkdir(parents=True, exist_ok=True)
    profile = {"min": e.min_batch, "opt": e.opt_batch, "max": e.max_batch}
    trt, reason = (None, "engine.required is false") if e.required == "false" else tensorrt_or_reason()
    if trt is None:
        if e.required == "true":
            raise EngineError(f"engine.required is true but the engine cannot be built here: {reason}")
        write_info(INFO, {"built": False, "reason": reason, "precision": e.precision, "onnx": str(onnx_path),
                          "profile": profile, **meta})
        click.echo(f"engine not built: {reason} (wrote {INFO})")
        return
    info = build(trt, onnx_path, ENGINE, TIMING_CACHE, e, meta)
    write_info(INFO, info)
    click.echo(f"wrote {ENGINE} ({info['precision']}, TensorRT {info['tensorrt']}, {info['gpu']['name']})")
