"""Quantization-aware fine-tuning (`export.qat`) against post-training quantization, side by side in
one run, every Conv and the classifier in INT8: agreement with FP32 and the relative logit error on
the selection images (the gate's images are never touched), for

- the fake-quantized student itself (ModelOpt's arithmetic, TensorRT's: int8 activations),
- its QDQ graph in ONNX Runtime (what `int8` ships),
- ONNX Runtime's static quantization of its weights (what `int8_cpu` ships: uint8 activations),

after 0 epochs (calibration only: post-training quantization) and after each fine-tuning setting, with
the fine-tuning time on this CPU. The last row is the noise floor: the same calibrated student with
its input moved by 1e-6, against itself.

    dvc repro strip && python benchmarks/int8_qat.py [--settings 2:2e-6,2:1e-5,2:1e-4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config.export import QATConfig
from pipeline.config.params import load_config
from pipeline.core import markdown, paths
from pipeline.core.machine import cpu
from pipeline.data.dataset import ManifestDataset, stack_images
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import ClassificationPresetTrain, eval_preset
from pipeline.deploy import onnx_runtime, qat
from pipeline.deploy.convert import export_int8_cpu, export_module, export_qdq
from pipeline.deploy.quantize import Failed
from pipeline.deploy.runners import load_deployable

SETTING = ("QOperator", "MinMax")


COLUMNS = [
    ("name", "every layer INT8", ""),
    ("seconds", "fine-tuning s", ".0f"),
    ("student", "student: agreement (flips)", ""),
    ("student_error", "rel. logit error", ".4f"),
    ("qdq", "QDQ graph in ONNX Runtime", ""),
    ("qdq_error", "rel. error", ".4f"),
    ("cpu", "ONNX Runtime's CPU quantization", ""),
    ("cpu_error", "rel. error", ".4f"),
]


def compare(logits: np.ndarray, reference: np.ndarray) -> tuple[str, float]:
    """(agreement with the reference and the images that changed class, relative logit error)."""
    flips = int((logits.argmax(1) != reference.argmax(1)).sum())
    error = float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))
    return f"{1 - flips / len(reference):.4f} ({flips})", error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="2:2e-6,2:1e-5,2:1e-4", help="epochs:lr, comma-separated")
    args = parser.parse_args()
    weights = paths.stripped(load_config("params.yaml").model.arch)
    if not weights.exists():
        raise SystemExit(f"{weights} is needed: run `dvc repro strip` first")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, meta = load_deployable(weights)
    rows, _ = read_manifest(paths.PREPARED)
    selection = [r for r in rows if r.split == "select"]
    if not selection:
        raise SystemExit(f"{paths.PREPARED} has no selection images: set data.synthetic.extra_select_per_class")
    preset = eval_preset(meta.preprocess)
    train = [r for r in rows if r.split == "train"]
    order = np.random.default_rng(0).permutation(len(train))[:64]  # the export's calibration images (seed 0)
    calibration = stack_images([train[i] for i in order], preset)
    images = stack_images(selection, preset)
    assert meta.training is not None, "a deployable written by `lio strip` records its training"
    augment = ClassificationPresetTrain(meta.training.data.transforms)
    train_set = ManifestDataset(rows, "train", augment)
    with torch.no_grad():
        reference = model.eval()(images).numpy()

    lines: list[dict] = []
    floor: dict = {}
    settings = [(0, 1e-6)] + [(int(e), float(lr)) for e, lr in (s.split(":") for s in args.settings.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        for epochs, lr in settings:
            start = time.perf_counter()
            student = qat.train_student(model, train_set, calibration, QATConfig("modelopt", epochs, lr), seed=0)
            seconds = time.perf_counter() - start
            with torch.no_grad():
                fake = student.model(images).numpy()
            qdq = Path(tmp) / f"qdq-{epochs}-{lr}.onnx"
            export_qdq(student.model, qdq, 18, meta)
            plain = Path(tmp) / f"plain-{epochs}-{lr}.onnx"
            export_module(qat.plain(student.model), plain, 18, meta)
            cpu_file = export_int8_cpu(plain, Path(tmp) / f"cpu-{epochs}-{lr}", calibration.numpy(), meta, (SETTING,))
            int8 = cpu_file[SETTING]
            if isinstance(int8, Failed):
                raise SystemExit(f"ONNX Runtime could not quantize the student's network ({SETTING}): {int8.reason}")
            name = "post-training (calibration only)" if epochs == 0 else f"{epochs} epochs at lr {lr:g}"
            row = {"name": name, "seconds": seconds}
            for key, logits in (
                ("student", fake),
                ("qdq", onnx_runtime.run(onnx_runtime.session(qdq), images.numpy())),
                ("cpu", onnx_runtime.run(onnx_runtime.session(int8), images.numpy())),
            ):
                row[key], row[f"{key}_error"] = compare(logits, reference)
            lines.append(row)
            if epochs == 0:
                with torch.no_grad():
                    moved = student.model(images + 1e-6 * torch.randn_like(images)).numpy()
                agree, error = compare(moved, fake)
                floor = {"name": "noise floor: that student, input moved by 1e-6, vs itself", "seconds": "—"}
                floor |= {"student": agree, "student_error": error}
            print(markdown.line(lines[-1], COLUMNS), flush=True)

    name, flags = cpu()
    print(f"\nCPU: {name}; INT8 instructions: {', '.join(flags) or 'none'}; {len(selection)} selection images.\n")
    print(markdown.table([*lines, floor], COLUMNS))


if __name__ == "__main__":
    main()
