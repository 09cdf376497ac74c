"""benchmarks/gpu.py on a machine without CUDA: it runs, says which GPU parts it skipped and
why, and needs nothing beyond torch, torchvision, numpy and pyyaml for its GPU parts."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "no CUDA device"

BLOCK = """
import sys
for name in ("onnx", "onnxruntime", "tqdm", "dvc", "dvclive", "click", "scipy", "modelopt", "tensorrt"):
    sys.modules[name] = None  # `import name` now fails, as on a machine without it
sys.path[:0] = [ROOT, BENCH]
import pipeline.lio, pipeline.backbone, pipeline.deploy.runners, train  # what the GPU parts import
print("ok")
"""


def test_runs_on_the_cpu_and_names_every_skipped_part(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] == torch.__version__
    if not torch.cuda.is_available():
        # the parts that can run on a CPU ran, at a tiny size; the CUDA-only ones say why they did not
        step = result["train_step"]
        assert "error" not in step and step["plain"]["seconds"] > 0 and step["lio_multi_stage"]["seconds"] > 0
        amp = result["autocast"]
        assert amp["device"] == "cpu" and amp["all_finite"] and len(amp["losses"]) == 3
        assert amp["stage_map_dtype_under_autocast"] == "torch.bfloat16" and amp["pseudo_mask_dtype"] == "torch.float32"
        assert amp["pseudo_mask_autocast_equals_float32"]
        assert result["strip_parity"]["cpu_bitwise_equal"] and result["strip_parity"]["cuda"]["skipped"] == NO_CUDA
        for name in ("report_backends", "onnxruntime_cuda", "tensorrt"):
            assert result[name]["skipped"] == NO_CUDA, name
            assert f"{name}" in proc.stdout and "skipped: no CUDA device" in proc.stdout
        return
    # on a CUDA machine, each part's result, not just the exit code
    step = result["train_step"]
    assert 0.5 < step["step_time_ratio"] < 5 and 0.5 < step["peak_memory_ratio"] < 5
    assert 0.5 < step["compiled_step_time_ratio"] < 5 and step["compiled_speedup_lio"] > 0
    amp = result["autocast"]
    assert amp["all_finite"] and amp["pseudo_mask_dtype"] == "torch.float32"
    assert amp["pseudo_mask_autocast_equals_float32"]
    parity = result["strip_parity"]
    assert parity["cpu_bitwise_equal"] and parity["cuda_within_tolerance"] and parity["cuda_same_top1"]
    backends = result["report_backends"]
    assert backends["cpu_backend_runs"] and backends["same_top1"] and backends["original_model_device"] == "cpu"
    ort_cuda = result["onnxruntime_cuda"]  # a CPU-only onnxruntime build lists no CUDA provider: then it says so
    assert "skipped" in ort_cuda or ort_cuda["cuda_provider_active"] == (
        "CUDAExecutionProvider" in ort_cuda["available_providers"]
    )
    trt = result["tensorrt"]
    assert "skipped" in trt or trt["all_same_top1"]


def test_gpu_parts_need_only_torch_torchvision_numpy_and_pyyaml():
    code = f"ROOT, BENCH = {str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}\n" + BLOCK
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
