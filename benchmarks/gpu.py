"""GPU acceptance run: the GPU path end to end at the paper's size, one JSON with every result.

    python benchmarks/gpu.py                      # writes reports/gpu/<device>.json
    python benchmarks/gpu.py --out results.json --steps 10

Needs only torch, torchvision, numpy, pyyaml and this repository's source (GPU machines often
come with their own torch); ONNX Runtime, onnx and TensorRT are used where importable, and
each part says why it was skipped otherwise. On a machine without CUDA, train_step, autocast
and the CPU half of strip_parity run at a tiny size (64 px, batch 8; CPU bf16 autocast), so the
script's code is tested on the CPU; the CUDA-only parts report "skipped: no CUDA device".

Parts:
- train_step: step time and peak memory, plain ResNet-50 vs multi-stage LIO, 448 px, pool 2,
  bf16 autocast, channels_last, batch 64 (benchmarks/train.py's measurement), eager and compiled
  (`train.compile`), as ratios;
- autocast: LIO training steps under bf16 autocast have finite losses, and the pseudo mask
  computed inside autocast equals the float32 one;
- strip_parity: the trained model's classification path against the plain torchvision model
  with the stripped weights, on the GPU (logits within tolerance; bitwise on the CPU is the
  proof, made by `lio strip`);
- report_backends: the report's CPU and CUDA PyTorch backends, each on its own model copy;
- onnxruntime_cuda: ONNX Runtime's CUDA provider, checked by session.get_providers();
- tensorrt: engine build, run and parity against ONNX Runtime FP32 at every profile batch size.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

NO_CUDA = "no CUDA device"
SIZE, POOL, BATCH, CLASSES = 448, 2, 64, 200


def cuda() -> bool:
    return torch.cuda.is_available()


def part(fn, *args):
    """Runs one part; an exception becomes its recorded error rather than the end of the run."""
    start = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as e:  # the JSON must say what failed and go on with the other parts
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
    if isinstance(result, dict):
        result.setdefault("seconds", round(time.perf_counter() - start, 2))
    return result


def geometry() -> tuple[str, int, int, int]:
    """(device, size, pool, batch): the paper's on a GPU, a tiny one that checks the code on a CPU."""
    return ("cuda", SIZE, POOL, BATCH) if cuda() else ("cpu", 64, 1, 8)


def train_step(steps: int) -> dict:
    from train import CASES, measure

    device, size, pool, batch = geometry()
    compiled_too = (False, True) if cuda() else (False,)  # compiling ResNet-50 takes minutes on a CPU
    cases = {
        (name, compiled): measure(CASES[name], batch, size, pool, device, steps if cuda() else 1, compiled)
        for compiled in compiled_too
        for name in ("plain", "LIO multi-stage")
    }
    plain, lio = cases["plain", False], cases["LIO multi-stage", False]
    setting = f"ResNet-50, batch {batch}, {size} px, pool {pool}, {device}"
    if not cuda():
        return {
            "setting": setting + ", float32, eager only (a code check, not a measurement)",
            "plain": plain,
            "lio_multi_stage": lio,
            "step_time_ratio": lio["seconds"] / plain["seconds"],
        }
    plain_c, lio_c = cases["plain", True], cases["LIO multi-stage", True]
    return {
        "setting": f"{setting}, bf16, channels_last, {steps} steps",
        "plain": plain,
        "lio_multi_stage": lio,
        "plain_compiled": plain_c,
        "lio_multi_stage_compiled": lio_c,
        "step_time_ratio": lio["seconds"] / plain["seconds"],
        "peak_memory_ratio": lio["peak_bytes"] / plain["peak_bytes"],
        # the goal: compiled LIO <= 1.15x the compiled plain step, peak memory <= 1.10x
        "compiled_step_time_ratio": lio_c["seconds"] / plain_c["seconds"],
        "compiled_peak_memory_ratio": lio_c["peak_bytes"] / plain_c["peak_bytes"],
        "compiled_speedup_lio": lio["seconds"] / lio_c["seconds"],
    }


def autocast(steps: int) -> dict:
    from pipeline.lio import LIOModel, group_positives, pseudo_mask

    device, size, pool, batch = geometry()
    torch.manual_seed(0)
    model = LIOModel("resnet50", CLASSES, pool=pool).to(device).train()
    if cuda():
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = 32 if cuda() else batch
    x = torch.randn(images, 3, size, size, device=device)
    x = x.contiguous(memory_format=torch.channels_last) if cuda() else x
    y = torch.randint(0, CLASSES, (images,), device=device)
    pos = group_positives(images // 4, 3).to(device)
    losses = []
    for _ in range(steps):
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(x, y, pos)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        losses.append({k: float(v.detach()) for k, v in {"loss": out.loss, **out.parts}.items()})
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        feats = model._run(x)[1]["layer3"]  # the stage map as training sees it (bf16)
        inside = pseudo_mask(feats, pos)
    outside = pseudo_mask(feats.float(), pos)
    return {
        "device": device,
        "steps": steps,
        "losses": losses,
        "all_finite": all(np.isfinite(list(s.values())).all() for s in losses),
        "stage_map_dtype_under_autocast": str(feats.dtype),
        "pseudo_mask_dtype": str(inside.dtype),
        "pseudo_mask_autocast_equals_float32": bool(torch.equal(inside, outside)),
    }


def strip_parity() -> dict:
    from pipeline.backbone import build_backbone
    from pipeline.lio import LIOModel

    _, size, pool, _ = geometry()
    torch.manual_seed(0)
    trained = LIOModel("resnet50", CLASSES, pool=pool).eval()
    plain = build_backbone("resnet50", CLASSES).eval()
    plain.load_state_dict(trained.plain().state_dict(), strict=True)
    x = torch.randn(8, 3, size, size)
    with torch.no_grad():
        cpu_equal = torch.equal(trained(x), plain(x))
        if not cuda():
            return {"cpu_bitwise_equal": bool(cpu_equal), "cuda": {"skipped": NO_CUDA}}
        a, b = trained.cuda()(x.cuda()), plain.cuda()(x.cuda())
    diff, scale = float((a - b).abs().max()), float(a.abs().max())
    return {
        "cpu_bitwise_equal": bool(cpu_equal),
        "cuda_max_abs_diff": diff,
        "cuda_largest_logit": scale,
        "cuda_within_tolerance": diff <= 1e-4 * max(scale, 1.0),
        "cuda_same_top1": bool((a.argmax(1) == b.argmax(1)).all()),
    }


def report_backends() -> dict:
    if not cuda():
        return {"skipped": NO_CUDA}
    from pipeline.backbone import build_backbone
    from pipeline.deploy.runners import torch_runner

    torch.manual_seed(0)
    model = build_backbone("resnet50", CLASSES).eval()
    cpu, gpu = torch_runner(model, "cpu"), torch_runner(model, "cuda")
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    a, b = cpu(x), gpu(x)
    return {
        "original_model_device": str(next(model.parameters()).device),
        "cpu_backend_runs": bool(np.isfinite(a).all()),
        "cpu_vs_cuda_max_abs_diff": float(np.abs(a - b).max()),
        "same_top1": bool((a.argmax(1) == b.argmax(1)).all()),
    }


def _meta():
    from pipeline.artifacts.deployable import Deployable, Preprocess

    classes = [str(i) for i in range(CLASSES)]
    return Deployable("resnet50", CLASSES, classes, Preprocess(512, SIZE, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))


def export_onnx(folder: Path) -> tuple[Path, torch.nn.Module]:
    from pipeline.backbone import build_backbone
    from pipeline.deploy.convert import export_module

    torch.manual_seed(0)
    model = build_backbone("resnet50", CLASSES).eval()
    path = folder / "model.onnx"
    export_module(model, path, 18, _meta())
    return path, model


def onnxruntime_cuda(folder: Path) -> dict:
    if not cuda():
        return {"skipped": NO_CUDA}
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"skipped": f"onnxruntime is not importable ({e})"}
    available = ort.get_available_providers()
    path, _ = export_onnx(folder)
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    return {
        "available_providers": available,
        "session_providers": session.get_providers(),
        "cuda_provider_active": session.get_providers()[0] == "CUDAExecutionProvider",
    }


def tensorrt(folder: Path) -> dict:
    if not cuda():
        return {"skipped": NO_CUDA}
    try:
        import tensorrt as trt
    except ImportError as e:
        return {"skipped": f"TensorRT is not importable ({e})"}
    import onnxruntime as ort

    from pipeline.artifacts.engine import EngineInfo, Profile
    from pipeline.config.engine import EngineConfig
    from pipeline.deploy.engine import EngineRunner, build

    path = folder / "model.onnx"
    if not path.exists():
        export_onnx(folder)
    cfg = EngineConfig(precision="fp32", min_batch=1, opt_batch=8, max_batch=16)
    built = build(trt, path, folder / "model.engine", folder / "timing.cache", cfg)
    meta = _meta()
    info = EngineInfo(
        True, "fp32", "fp32", Profile(1, 8, 16), str(path), meta.classes, meta.preprocess, **built.fields()
    )
    info.save(folder / "engine.json")
    runner = EngineRunner(folder / "model.engine", folder / "engine.json")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = {}
    for batch in range(cfg.min_batch, cfg.max_batch + 1):
        x = np.random.default_rng(batch).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
        ref = session.run(None, {session.get_inputs()[0].name: x})[0]
        got = runner(x)
        rows[batch] = {
            "max_abs_diff": float(np.abs(got - ref).max()),
            "same_top1": bool((got.argmax(1) == ref.argmax(1)).all()),
        }
    return {"tensorrt": trt.__version__, "per_batch": rows, "all_same_top1": all(r["same_top1"] for r in rows.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default reports/gpu/<device>.json)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per model")
    args = parser.parse_args()
    device = torch.cuda.get_device_name() if cuda() else "cpu"
    out = args.out or ROOT / "reports" / "gpu" / f"{device.replace(' ', '_')}.json"
    result = {
        "machine": {
            "device": device,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "host": platform.node(),
        },
        "train_step": part(train_step, args.steps),
        "autocast": part(autocast, 3),
        "strip_parity": part(strip_parity),
        "report_backends": part(report_backends),
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["onnxruntime_cuda"] = part(onnxruntime_cuda, Path(tmp))
        result["tensorrt"] = part(tensorrt, Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result.items():
        if name != "machine":
            status = f"skipped: {r['skipped']}" if "skipped" in r else r.get("error") or "ran"
            status += f" ({r['setting']})" if "setting" in r else ""
            print(f"{name:18s} {status}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
