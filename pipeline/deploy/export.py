"""The export sequencer: the deployable -> every ONNX variant in `export.precisions`, gated
(mmdeploy's tools/deploy.py shape: converters, a registry, one judge, read top to bottom).

1. the image sets are chosen and decoded once (pipeline/data/heldout.py);
2. FP32 is exported and must match PyTorch on the test images (else it is removed and the stage fails);
3. the judge takes FP32's logits on every set (pipeline/deploy/judge.py);
4. each variant's recipe (pipeline/deploy/recipes.py) writes candidates; the fastest is kept (timed at
   `engine.max_batch` on this CPU); an INT8 one that misses the rule on the selection images keeps its
   most INT8-sensitive layers in FP32, the fewest that meet it (`int8_fallback`); then the gate
   decides once, on images training never saw. A rejected variant leaves no file; its numbers stay
   in reports/export.json.
"""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.export import (
    ExportReport,
    FusedCheck,
    Parity,
    Variant,
)
from pipeline.config.data import TransformConfig
from pipeline.config.export import ExportConfig
from pipeline.data.dataset import ManifestDataset, run_batches
from pipeline.data.heldout import HeldOut, ImageSets
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import ClassificationPresetTrain, eval_preset
from pipeline.deploy import qat
from pipeline.deploy.convert import export_fp32, export_fused, export_module
from pipeline.deploy.int8_fallback import rank_layers
from pipeline.deploy.judge import ExportError, Judge, check_gate_images, check_parity
from pipeline.deploy.made import Made
from pipeline.deploy.preprocess import resize_and_crop
from pipeline.deploy.quantize import layer_nodes
from pipeline.deploy.recipes import RECIPES, Inputs
from pipeline.deploy.runners import Backend, load_deployable, onnx_backend, torch_runner

__all__ = ["ExportError", "export_all"]


def export_all(
    weights: Path,
    prepared: Path,
    onnx_files: dict[str, Path],
    report: Path,
    cfg: ExportConfig,
    seed: int,
    batch: int,
    fused: Path | None = None,
) -> ExportReport:
    """Every variant of `cfg.precisions`, gated; the results, also written to `report`."""
    model, meta = load_deployable(weights)
    rows, _ = read_manifest(prepared)
    held_out = HeldOut.of(rows, cfg.calib_images, seed)
    check_gate_images(cfg.gates, cfg.precisions, len(held_out.gate), held_out.gate_source)
    for path in [*onnx_files.values(), *([fused] if fused else [])]:
        path.unlink(missing_ok=True)  # no variant of an earlier, wider export outlives this one
    sets = held_out.decode(eval_preset(meta.preprocess))
    fp32, parity = export_checked_fp32(weights, model, onnx_files["fp32"], cfg.opset, sets)
    judge = Judge.of(fp32, sets, cfg.gates)
    variants = {"fp32": reference_variant(fp32, parity, judge)}
    with tempfile.TemporaryDirectory(dir=fp32.file.parent) as work:
        inputs = recipe_inputs(model, meta, fp32.file, sets, cfg, seed, rows, Path(work))
        for precision in tqdm([p for p in cfg.precisions if p != "fp32"], desc="export", unit="variant"):
            made = Made(RECIPES[precision], inputs, judge, batch)
            variants[precision] = made.variant(precision, onnx_files[precision])
    fused_check = None
    if cfg.fuse_preprocess and fused is not None:
        fused_check = export_fused_checked(weights, fused, meta, cfg.opset, held_out.test, judge.reference["test"])
    result = ExportReport(
        decided_on=f"{held_out.gate_source}, against onnxruntime-fp32 on {fp32.device}; INT8 settings chosen on "
        f"{held_out.select_source}",
        variants=variants,
        fused_preprocess=fused_check,
    )
    result.save(report)
    return result


def export_checked_fp32(
    weights: Path, model: nn.Module, path: Path, opset: int, sets: ImageSets
) -> tuple[Backend, Parity]:
    """The FP32 file on ONNX Runtime's best provider here, once it matches PyTorch (`model`, loaded from
    `weights`) on the test images."""
    export_fp32(weights, path, opset)
    fp32 = onnx_backend("onnxruntime-fp32", path, "cuda" if torch.cuda.is_available() else "cpu")
    images = sets.test.pixels
    parity = check_parity(run_batches(fp32.run, images), run_batches(torch_runner(model), images))
    if not parity.passed:
        path.unlink()
        raise ExportError(f"{path}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    return fp32, parity


def reference_variant(fp32: Backend, parity: Parity, judge: Judge) -> Variant:
    return Variant(
        precision="fp32",
        file=str(fp32.file),
        status="reference",
        test_top1=judge.top1("test"),
        provider=fp32.device,
        parity_vs_pytorch=parity,
        gate_top1=judge.top1("gate"),
    )


def recipe_inputs(
    model: nn.Module,
    meta: Deployable,
    fp32: Path,
    sets: ImageSets,
    cfg: ExportConfig,
    seed: int,
    rows: list[Record],
    work: Path,
) -> Inputs:
    """The recipes' shared inputs; the QAT student and the layer ranking are made on first use, once."""

    @cache
    def ranking():
        """Measured on up to 128 selection images, shared by both INT8 variants."""
        images = torch.from_numpy(sets.select.pixels[:128])
        return rank_layers(model, torch.from_numpy(sets.calibration), images)

    @cache
    def student() -> qat.Student:
        """Fine-tuned once, on the training split with the training augmentation."""
        spec = meta.preprocess
        transforms = meta.training.data.transforms if meta.training else TransformConfig(spec.resize, spec.crop)
        train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(transforms))
        made = qat.train_student(model, train_set, torch.from_numpy(sets.calibration), cfg.qat, seed)
        made.fp32 = work / "qat.onnx"
        export_module(qat.plain(made.model), made.fp32, cfg.opset, meta)
        return made

    named = bool(layer_nodes(onnx.load(str(fp32))))  # a graph without torch's scopes names no layer
    uses_qat = cfg.qat.method != "none"
    return Inputs(
        fp32,
        sets.calibration,
        meta,
        cfg.int8_fallback_layers,
        cfg.opset,
        student if uses_qat else None,
        ranking if named else None,
    )


def export_fused_checked(
    weights: Path, path: Path, meta: Deployable, opset: int, rows: list[Record], reference: np.ndarray
) -> FusedCheck:
    """The fused variant, fed the client's uint8 crops of the test images, must give FP32's top-1
    and logits within 1e-4 of the largest (else it is removed and the stage fails)."""
    from pipeline.deploy import onnx_runtime

    export_fused(weights, path, opset)
    sess = onnx_runtime.session(path)
    crops = np.concatenate([resize_and_crop(r.path, meta.preprocess) for r in rows])
    logits = np.concatenate([sess.run(None, {"images": crops[i : i + 32]})[0] for i in range(0, len(crops), 32)])
    parity = check_parity(logits, reference)
    if not parity.passed:
        path.unlink()
        raise ExportError(f"{path}: the fused-preprocessing model disagrees with FP32 on the test images ({parity})")
    return FusedCheck(str(path), "uint8 [batch, crop, crop, 3]", parity)
