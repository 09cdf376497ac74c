"""benchmarks/gpu.py on a machine without CUDA: it runs, says which GPU parts it skipped and
why, and needs nothing beyond torch, torchvision, numpy and pyyaml for its GPU parts."""

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("train_step", "autocast", "strip_parity", "report_backends", "onnxruntime_cuda", "tensorrt")

BLOCK = """
import sys
for name in ("onnx", "onnxruntime", "tqdm", "dvc", "dvclive", "click", "scipy", "modelopt", "tensorrt"):
    sys.modules[name] = None  # `import name` now fails, as on a machine without it
sys.path[:0] = [ROOT, BENCH]
import pipeline.lio, pipeline.backbone, pipeline.deploy, train  # what the GPU parts import
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
        for name in PARTS:
            assert result[name]["skipped"] == "no CUDA device", name
            assert f"{name}" in proc.stdout and "skipped: no CUDA device" in proc.stdout


def test_gpu_parts_need_only_torch_torchvision_numpy_and_pyyaml():
    code = f"ROOT, BENCH = {str(ROOT)!r}, {str(ROOT / 'benchmarks')!r}\n" + BLOCK
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
