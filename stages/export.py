"""`lio export`: models/<arch>.pt -> models/onnx/model[.fp16|.int8].onnx and reports/export.json.

The variants live in one folder so that `export.precisions` can name any subset without
changing the outputs declared in dvc.yaml."""
from pathlib import Path

import click
import numpy as np
import torch

from pipeline import onnx_runtime
from pipeline.data.dataset import logits_over, stack_images
from pipeline.data.prepare import read_manifest
from pipeline.data.transforms import ClassificationPresetEval
from pipeline.deploy import load_deployable
from pipeline.export import ExportError, check_parity, export_fp16, export_fp32, export_int8
from pipeline.io import write_json
from stages.common import with_config
from stages.prepare import OUT as PREPARED
from stages.strip import deployable_path

ONNX_DIR = Path("models/onnx")
ONNX = {p: ONNX_DIR / name for p, name in [("fp32", "model.onnx"), ("fp16", "model.fp16.onnx"), ("int8", "model.int8.onnx")]}
REPORT = Path("reports/export.json")


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


@click.command("export")
@with_config
def command(cfg):
    """Export the plain model to ONNX and make the FP16/INT8 variants; check each in ONNX Runtime."""
    model, meta = load_deployable(deployable_path(cfg.model.arch))
    rows, _ = read_manifest(PREPARED)
    preset = ClassificationPresetEval(cfg.data.transforms)
    test_rows = [r for r in rows if r["split"] == "test"]
    labels = np.array([r["label"] for r in test_rows])

    def pytorch(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    for path in ONNX.values():  # no stale variant may outlive a failed or narrower export
        path.unlink(missing_ok=True)
    fp32 = ONNX["fp32"]
    export_fp32(model, fp32, cfg.data.transforms.crop, cfg.export.opset, meta)
    session = onnx_runtime.session(fp32)
    out = logits_over({"pytorch": pytorch, "fp32": lambda x: onnx_runtime.run(session, x)}, test_rows, preset)
    fp32_logits = out["fp32"]
    parity = check_parity(fp32_logits, out["pytorch"])
    if not parity["passed"]:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    result = {"fp32": {"file": str(fp32), "provider": onnx_runtime.provider(session), "parity_vs_pytorch": parity,
                       "test_top1": top1(fp32_logits, labels)}}

    train_rows = [r for r in rows if r["split"] == "train"]
    order = np.random.default_rng(cfg.seed).permutation(len(train_rows))[: cfg.export.calib_images]
    sessions = {}
    for precision in cfg.export.precisions:
        if precision == "fp32":
            continue
        path = ONNX[precision]
        if precision == "fp16":
            export_fp16(fp32, path, meta)
        else:
            calibration = stack_images([train_rows[i] for i in order], preset).numpy()
            export_int8(fp32, path, calibration, meta)
        sessions[precision] = onnx_runtime.session(path)
    runs = {precision: (lambda x, s=s: onnx_runtime.run(s, x)) for precision, s in sessions.items()}
    for precision, logits in logits_over(runs, test_rows, preset).items():
        result[precision] = {
            "file": str(ONNX[precision]), "provider": onnx_runtime.provider(sessions[precision]),
            "top1_agreement_vs_fp32": float((logits.argmax(1) == fp32_logits.argmax(1)).mean()),
            "max_abs_diff_vs_fp32": float(np.abs(logits - fp32_logits).max()),
            "test_top1": top1(logits, labels),
        }
        if precision == "int8":
            result[precision]["calibration_images"] = int(len(order))
    write_json(REPORT, result)
    for precision, r in result.items():
        click.echo(f"{precision}: {r['file']} test top1 {r['test_top1']:.3f}")
