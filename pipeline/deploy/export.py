"""ONNX export of the plain model, its reduced-precision variants, and the gates they must pass.

Precision is decided in the ONNX graph (docs/method.md, "Precision"), so that TensorRT can build
every GPU variant strongly typed: FP16 by ModelOpt AutoCast, INT8 by ModelOpt post-training
quantization (QDQ, made for TensorRT). `int8_cpu` is ONNX Runtime's own static quantization,
in the format its CPU kernels run fastest (ModelOpt's QDQ graph runs slower than FP32 there).

Each file is written atomically and checked before it lands: the FP32 export must pass
`onnx.checker` (full check) and match PyTorch on the test images. Every reduced-precision
variant then faces its gate (`export.gates`): MLPerf Inference's rule, top-1 at least 99% of
FP32's, with agreement with FP32 as a floor against broken quantization, decided on images training
never saw (validation + held-out gate images) against FP32 on the best ONNX Runtime provider here
(test numbers are recorded beside, never used to decide). A variant that fails is deleted and marked
rejected in reports/export.json with its numbers.

Every gate decides once. The INT8 settings are chosen before it, on selection images the gate never
sees (the embedded set's fourth stream, else the training images calibration left): every Conv and
the classifier in INT8 first (after quantization-aware fine-tuning, `export.qat`, when it is on);
when that misses the rule there, the fallback keeps the layers INT8 hurts most in FP32, the fewest
that meet it (`int8_fallback`); the report names them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.export import ExportReport, GateResult, Variant
from pipeline.config.data import TransformConfig
from pipeline.config.export import RULE, ExportConfig, Gate
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.core.metrics import accuracy, agreement, images_needed, paired_drop_ci, wilson
from pipeline.core.timing import throughput
from pipeline.data.dataset import ManifestDataset, run_batches, stack_images
from pipeline.data.manifest import Record, read_manifest
from pipeline.data.transforms import ClassificationPresetTrain, eval_preset
from pipeline.deploy import onnx_runtime, qat
from pipeline.deploy.int8_fallback import LayerSensitivity, fewest, rank_layers
from pipeline.deploy.preprocess import resize_and_crop
from pipeline.deploy.quantize import export_int8_cpu, input_sources, layer_nodes
from pipeline.deploy.runners import load_deployable, torch_runner

INPUT, OUTPUT = "input", "logits"


class ExportError(PipelineError, RuntimeError):
    pass


def export_fp32(model: nn.Module, path: Path, input_size: int, opset: int, meta: Deployable) -> None:
    """One self-contained file with a symbolic batch axis, from torch.export (opset >= 18)."""
    _export(model.eval(), torch.randn(2, 3, input_size, input_size), INPUT, path, opset, meta)


def _export(
    module: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int, meta: Deployable
) -> None:
    """torch.export -> ONNX with a symbolic batch axis and the metadata inside, fully checked, atomically."""
    with atomic_path(path) as tmp:
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=True,
            opset_version=opset,
            external_data=False,
            input_names=[input_name],
            output_names=[OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def export_qdq(student: nn.Module, path: Path, input_size: int, opset: int, meta: Deployable) -> None:
    """The fake-quantized student as a QDQ graph (QuantizeLinear/DequantizeLinear with its scales): what
    TensorRT builds as INT8. ModelOpt's quantizers export through torch's TorchScript-based exporter
    (torch.export cannot trace their range checks)."""
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            student.eval(),
            (torch.randn(2, 3, input_size, input_size),),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


class FusedPreprocess(nn.Module):
    """uint8 NHWC images at the crop size -> logits: the scaling and normalisation move into the
    graph (TensorRT and Triton run them on the GPU), and a client only resizes and crops."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() / 255
        return self.model((x - self.mean) / self.std)


def export_fused(model: nn.Module, path: Path, opset: int, meta: Deployable) -> None:
    """The fused-preprocessing variant: input `images`, uint8 [batch, crop, crop, 3]
    (resized and centre-cropped RGB: pipeline.deploy.preprocess.resize_and_crop)."""
    spec = meta.preprocess
    fused = FusedPreprocess(model, spec.mean, spec.std).eval()
    meta = replace(meta, input="images", preprocess=replace(spec, layout="NHWC RGB uint8, resized and cropped"))
    _export(fused, torch.zeros(2, spec.crop, spec.crop, 3, dtype=torch.uint8), "images", path, opset, meta)


def check_parity(ort_logits: np.ndarray, torch_logits: np.ndarray, tolerance: float = 1e-4) -> dict:
    """Same top-1 on every image, and logits within `tolerance` x the largest |logit|."""
    scale = float(np.abs(torch_logits).max())
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    same_top1 = bool((ort_logits.argmax(1) == torch_logits.argmax(1)).all())
    return {
        "images": len(torch_logits),
        "same_top1": same_top1,
        "max_abs_diff": max_diff,
        "largest_logit": scale,
        "passed": same_top1 and max_diff <= tolerance * scale,
    }


def export_fp16(fp32: Path, path: Path, meta: Deployable) -> None:
    from modelopt.onnx.autocast import convert_to_mixed_precision

    with atomic_path(path) as tmp:
        proto = convert_to_mixed_precision(onnx_path=str(fp32), low_precision_type="fp16", keep_io_types=True)
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def export_int8(
    fp32: Path, path: Path, calibration: np.ndarray, meta: Deployable, exclude: tuple[str, ...] = ()
) -> None:
    """ModelOpt post-training quantization (QDQ, for TensorRT) calibrated on training images;
    `exclude` names the nodes that stay in FP32 (exact names). ModelOpt gets a copy of `fp32`: it
    writes shape inference into its input file (`onnx.shape_inference.infer_shapes_path`), and the
    FP32 file is an output of its own, already checked, that other readers may have open."""
    from modelopt.onnx.quantization import quantize

    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        source = Path(scratch) / fp32.name
        shutil.copyfile(fp32, source)
        quantize(
            onnx_path=str(source),
            quantize_mode="int8",
            calibration_data=calibration.astype(np.float32),
            calibration_method="entropy",
            calibration_eps=["cpu"],
            nodes_to_exclude=[re.escape(name) + "$" for name in exclude] or None,  # ModelOpt matches re.match
            output_path=str(tmp),
            high_precision_dtype="fp32",
            log_level="WARNING",
        )
        proto = onnx.load(str(tmp))
        onnx_runtime.write_meta(proto, meta)
        onnx.save(proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def judge(gate: Gate, reference: dict, logits: dict, labels: dict) -> GateResult:
    """The gate on the gate images (`passed` decides on the estimates), with their 95% intervals;
    test numbers beside (reported only)."""
    mine, ref, y = logits["gate"].argmax(1), reference["gate"].argmax(1), labels["gate"]
    n, same = len(y), int((mine == ref).sum())
    lost, gained = int(((ref == y) & (mine != y)).sum()), int(((ref != y) & (mine == y)).sum())
    top1, top1_fp32 = float((mine == y).mean()), float((ref == y).mean())
    agree = same / n
    return GateResult(
        passed=gate.accepts(top1, top1_fp32, agree),
        rule=RULE,
        min_top1_ratio=gate.min_top1_ratio,
        min_agreement=gate.min_agreement,
        images=n,
        top1=top1,
        top1_fp32=top1_fp32,
        top1_ratio=top1 / top1_fp32 if top1_fp32 else float("nan"),
        top1_drop=top1_fp32 - top1,
        top1_drop_ci95=paired_drop_ci(lost, gained, n),
        agreement=agree,
        agreement_ci95=wilson(same, n),
        test_top1=accuracy(logits["test"], labels["test"])["top1"],
        test_agreement=agreement(logits["test"], reference["test"]),
        max_abs_diff_vs_fp32=float(np.abs(logits["test"] - reference["test"]).max()),
    )


def measure_against(gate: Gate, reference: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> dict:
    """A candidate's agreement with FP32 and top-1 drop on the selection images, held to its gate's
    thresholds: how the INT8 settings are chosen before the gate decides once."""
    mine, ref = logits.argmax(1), reference.argmax(1)
    top1, top1_fp32 = float((mine == labels).mean()), float((ref == labels).mean())
    agree = float((mine == ref).mean())
    return {
        "images": len(labels),
        "agreement": agree,
        "top1": top1,
        "top1_fp32": top1_fp32,
        "top1_drop": top1_fp32 - top1,
        "passed": gate.accepts(top1, top1_fp32, agree),
    }


def check_gate_images(gates: dict[str, Gate], precisions: list[str], n: int, where: str) -> None:
    """Refuses, before any export, a gate its images cannot decide: one image must be worth at most
    a fifth of the gate's tolerance (0.99 agreement: 500 images)."""
    for p in precisions:
        if p == "fp32":
            continue
        g = gates[p]
        needed = max(images_needed(1 - g.min_top1_ratio), images_needed(1 - g.min_agreement))
        if n < needed:
            raise ExportError(
                f"export.gates.{p} (min_top1_ratio {g.min_top1_ratio}, min_agreement {g.min_agreement}) needs at "
                f"least {needed} images to decide (one image may be worth at most a fifth of its tolerance), but "
                f"{where} holds {n}: loosen the gate, or give it more images (a larger validation split; for the "
                "embedded set, data.synthetic.extra_gate_per_class)"
            )


def batch32_throughput(path: Path, images: np.ndarray, iters: int = 3) -> float:
    """Images per second at batch 32 on this machine's ONNX Runtime CPU provider."""
    sess = onnx_runtime.session(path)
    x = np.resize(images, (32, *images.shape[1:])).astype(np.float32)
    return throughput(lambda b: onnx_runtime.run(sess, b), x, iters)


# --- the registered variants: each yields candidate files; INT8 may keep its most sensitive layers in FP32 -----


@dataclass(frozen=True)
class Inputs:
    """What every variant's recipe gets: the FP32 file, calibration images (training split), metadata,
    how many layers the INT8 fallback may keep in FP32, the quantization-aware student (made on first
    use, shared by both INT8 variants; None: post-training quantization only), and the layers ranked
    by INT8 sensitivity (measured on first use, shared; None: no fallback)."""

    fp32: Path
    calibration: np.ndarray
    meta: Deployable
    fallback_layers: int
    opset: int = 18
    student: Callable[[], qat.Student] | None = None
    ranking: Callable[[], list[LayerSensitivity]] | None = None


@dataclass
class Candidate:
    label: str  # e.g. "QOperator/MinMax"; "" for a variant's only candidate
    path: Path
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    """How one precision is made: `candidates` writes each candidate into a scratch folder (the fastest
    is kept); `keep_fp32`, when that one falls short on the selection images, writes it again with the
    given layers in FP32 (the fallback asks for the fewest that meet the rule). `runs_here`: the file
    deploys on this machine's ONNX Runtime, so its speed here is its speed (int8_cpu, not TensorRT's)."""

    candidates: Callable[[Inputs, Path], Iterator[Candidate]]
    keep_fp32: Callable[[Inputs, Path, Candidate, tuple[str, ...]], Candidate] | None = None
    calibrated: bool = False
    runs_here: bool = False


def _fp16(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "fp16.onnx"
    export_fp16(inputs.fp32, path, inputs.meta)
    yield Candidate("", path)


def _int8(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    path = scratch / "int8.onnx"
    if inputs.student is None:
        export_int8(inputs.fp32, path, inputs.calibration, inputs.meta)
        yield Candidate("", path)
        return
    student = inputs.student()
    export_qdq(student.model, path, inputs.meta.preprocess.crop, inputs.opset, inputs.meta)
    sess = onnx_runtime.session(path)
    parity = qat.parity(student.model, lambda x: onnx_runtime.run(sess, x), inputs.calibration)
    yield Candidate("QAT", path, {"qat": student.log.summary(), "parity_vs_fake_quant": parity})


def _int8_keep(inputs: Inputs, scratch: Path, failed: Candidate, layers: tuple[str, ...]) -> Candidate:
    """ModelOpt's post-training quantization of the FP32 file with `layers` left in FP32."""
    nodes = layer_nodes(onnx.load(str(inputs.fp32)))
    path = scratch / f"int8-fp32-{len(layers)}.onnx"
    export_int8(inputs.fp32, path, inputs.calibration, inputs.meta, exclude=tuple(nodes[name] for name in layers))
    return Candidate(f"{len(layers)} layers in FP32", path, {"kept_in_fp32": list(layers)})


def _int8_cpu(inputs: Inputs, scratch: Path) -> Iterator[Candidate]:
    """ONNX Runtime's static quantization, in each format, of the QAT weights (else the FP32 file)."""
    student = inputs.student() if inputs.student is not None else None
    source = inputs.fp32 if student is None or student.fp32 is None else student.fp32
    extra = {"qat": student.log.summary()} if student is not None else {}
    made = export_int8_cpu(source, scratch, inputs.calibration, inputs.meta)
    failed = {f"{fmt}/{method}": why for (fmt, method), why in made.items() if isinstance(why, str)}
    if len(failed) == len(made):
        raise ExportError(f"ONNX Runtime could not quantize {source} in any format: {failed}")
    for (fmt, method), path in made.items():
        if isinstance(path, Path):  # a format ONNX Runtime failed on is recorded beside the ones it made
            details = {"format": fmt, "calibration": method, **extra, **({"failed": failed} if failed else {})}
            yield Candidate(f"{fmt}/{method}", path, details)


def _int8_cpu_keep(inputs: Inputs, scratch: Path, failed: Candidate, layers: tuple[str, ...]) -> Candidate:
    """The fastest candidate's format and calibration on the FP32 file, with `layers` left in FP32."""
    setting = (failed.details["format"], failed.details["calibration"])
    path = export_int8_cpu(inputs.fp32, scratch, inputs.calibration, inputs.meta, (setting,), layers)[setting]
    if not isinstance(path, Path):
        raise ExportError(f"ONNX Runtime could not quantize {inputs.fp32} with {len(layers)} layers in FP32: {path}")
    graph = onnx.load(str(inputs.fp32))
    names = {node: layer for layer, node in layer_nodes(graph).items()}
    sources = [names.get(n, n) for n in input_sources(graph, layers)]
    details = {"format": setting[0], "calibration": setting[1], "kept_in_fp32": list(layers), "inputs_in_fp32": sources}
    return Candidate(f"{failed.label}, {len(layers)} layers in FP32", path, details)


#: precision -> its recipe; fp32 is the reference every other variant is gated against
RECIPES: dict[str, Recipe] = {
    "fp16": Recipe(_fp16),
    "int8": Recipe(_int8, keep_fp32=_int8_keep, calibrated=True),
    "int8_cpu": Recipe(_int8_cpu, keep_fp32=_int8_cpu_keep, calibrated=True, runs_here=True),
}


def export_all(
    deployable: Path,
    prepared: Path,
    onnx_files: dict[str, Path],
    report: Path,
    cfg: ExportConfig,
    seed: int,
    fused: Path | None = None,
) -> ExportReport:
    """The deployable -> every ONNX variant in `cfg.precisions`, gated; returns the results,
    also written to `report` (reports/export.json).

    One loop for every variant (`export_variant`): its recipe writes candidates, the fastest is kept,
    an INT8 one that misses the rule on the selection images keeps its most sensitive layers in FP32,
    the fewest that meet it, and the gate decides once. Preprocessing comes from the deployable's
    metadata; every image is decoded once. No variant of an earlier, wider export outlives this one;
    an FP32 file that disagrees with PyTorch is removed and the stage fails.
    """
    model, meta = load_deployable(deployable)
    rows, _ = read_manifest(prepared)
    preset = eval_preset(meta.preprocess)
    split = {s: [r for r in rows if r.split == s] for s in ("train", "val", "test")}
    split["gate"] = split["val"] + [r for r in rows if r.split == "gate"]  # never trained on, labelled
    labels = {s: np.array([r.label for r in split[s]]) for s in ("val", "gate", "test")}
    held_out = len(split["gate"]) - len(split["val"])
    where = f"the validation split ({len(split['val'])} images)" + (
        f" with {held_out} held-out gate images" if held_out else ""
    )
    check_gate_images(cfg.gates, cfg.precisions, len(split["gate"]), where)

    for path in [*onnx_files.values(), *([fused] if fused else [])]:
        path.unlink(missing_ok=True)
    order = np.random.default_rng(seed).permutation(len(split["train"]))
    # the INT8 settings are chosen on images the gate never sees: the embedded set's held-out selection
    # images, else the training images calibration left (optimistic: the model fits them), else those
    selection = [r for r in rows if r.split == "select"]
    chosen_on = f"{len(selection)} held-out selection images"
    if not selection:
        selection = [split["train"][i] for i in order[cfg.calib_images :]] or [split["train"][i] for i in order]
        chosen_on = f"{len(selection)} training images" + (
            " calibration left" if len(order) > cfg.calib_images else " (all used for calibration too)"
        )
    decoded = {
        name: stack_images(images, preset).numpy()
        for name, images in tqdm(
            [("test", split["test"]), ("gate", split["gate"]), ("select", selection)],
            desc="decoding the test, gate and selection images",
            leave=False,
        )
    }
    calibration = stack_images([split["train"][i] for i in order[: cfg.calib_images]], preset).numpy()
    selection_labels = np.array([r.label for r in selection])

    fp32 = onnx_files["fp32"]
    export_fp32(model, fp32, meta.preprocess.crop, cfg.opset, meta)
    session = onnx_runtime.session(fp32, "cuda" if torch.cuda.is_available() else "cpu")
    fp32_run = lambda x: onnx_runtime.run(session, x)  # noqa: E731
    parity = check_parity(run_batches(fp32_run, decoded["test"]), run_batches(torch_runner(model), decoded["test"]))
    if not parity["passed"]:
        fp32.unlink()
        raise ExportError(f"{fp32}: ONNX Runtime disagrees with PyTorch on the test images ({parity}); file removed")
    reference = {s: run_batches(fp32_run, decoded[s]) for s in ("test", "gate", "select")}
    variants = {
        "fp32": Variant(
            precision="fp32",
            file=str(fp32),
            status="reference",
            test_top1=accuracy(reference["test"], labels["test"])["top1"],
            provider=onnx_runtime.provider(session),
            details={"parity_vs_pytorch": parity, "gate_top1": accuracy(reference["gate"], labels["gate"])["top1"]},
        )
    }

    def select(path: Path, precision: str) -> dict:
        run = onnx_runtime.runner(onnx_runtime.session(path))
        logits = run_batches(run, decoded["select"])
        return measure_against(cfg.gates[precision], reference["select"], logits, selection_labels)

    def gate(path: Path, precision: str) -> tuple[GateResult, str]:
        sess = onnx_runtime.session(path)
        logits = {s: run_batches(onnx_runtime.runner(sess), decoded[s]) for s in ("gate", "test")}
        return judge(cfg.gates[precision], reference, logits, labels), onnx_runtime.provider(sess)

    @cache
    def ranking() -> list[LayerSensitivity]:
        """Measured once, on up to 128 selection images, shared by both INT8 variants."""
        images = torch.from_numpy(decoded["select"][:128])
        return rank_layers(model, torch.from_numpy(calibration), images)

    with tempfile.TemporaryDirectory(dir=fp32.parent) as work:

        @cache
        def student() -> qat.Student:
            """Fine-tuned once, on the training split with the training augmentation."""
            spec = meta.preprocess
            transforms = meta.training.data.transforms if meta.training else TransformConfig(spec.resize, spec.crop)
            train_set = ManifestDataset(rows, "train", ClassificationPresetTrain(transforms))
            made = qat.train_student(model, train_set, torch.from_numpy(calibration), cfg.qat, seed)
            made.fp32 = Path(work) / "qat.onnx"
            export_fp32(qat.plain(made.model), made.fp32, meta.preprocess.crop, cfg.opset, meta)
            return made

        uses_qat = cfg.qat.method != "none"
        inputs = Inputs(
            fp32,
            calibration,
            meta,
            cfg.int8_fallback_layers,
            cfg.opset,
            student if uses_qat else None,
            ranking if layer_nodes(onnx.load(str(fp32))) else None,  # a graph without torch's scopes names no layer
        )
        for precision in tqdm([p for p in cfg.precisions if p != "fp32"], desc="export", unit="variant"):
            variants[precision] = export_variant(
                precision, RECIPES[precision], inputs, onnx_files[precision], gate, select
            )
    fused_check = None
    if cfg.fuse_preprocess and fused is not None:
        fused_check = export_fused_checked(model, fused, meta, cfg.opset, split["test"], reference["test"])
    result = ExportReport(
        decided_on=f"{where}, against onnxruntime-fp32 on {onnx_runtime.provider(session)}; INT8 settings chosen on "
        f"{chosen_on}",
        variants=variants,
        fused_preprocess=fused_check,
    )
    result.save(report)
    return result


def export_variant(
    precision: str,
    recipe: Recipe,
    inputs: Inputs,
    out: Path,
    gate: Callable[[Path, str], tuple[GateResult, str]],
    select: Callable[[Path, str], dict] | None = None,
) -> Variant:
    """Candidates -> the fastest (batch 32 on this CPU, timed only when there is a choice) -> for a
    calibrated variant, the rule on the selection images (`select`, never a gate image): when every
    layer in INT8 misses it, the fewest of the most sensitive layers kept in FP32 that meet it (the
    most allowed otherwise) -> the gate decides once; the file lands at `out` only when it passed (a
    rejected variant leaves no file; its numbers stay in the report). A quantization-aware fine-tuning
    that did not converge falls short whatever it scores, and says so."""
    details: dict = {"calibration_images": len(inputs.calibration)} if recipe.calibrated else {}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        candidates = list(recipe.candidates(inputs, Path(tmp)))
        chosen = candidates[0]
        speeds: dict[str, float] = {}
        if len(candidates) > 1:  # the choice is made on speed alone
            speeds = {c.label: batch32_throughput(c.path, inputs.calibration) for c in candidates}
            chosen = max(candidates, key=lambda c: speeds[c.label])
            details["candidates"] = [{**c.details, "batch32_img_s": speeds[c.label]} for c in candidates]
        details |= {
            k: v
            for k, v in chosen.details.items()
            if k in ("format", "calibration", "qat", "parity_vs_fake_quant", "failed")
        }
        tries: list[dict] = []
        if select is not None and recipe.calibrated:
            tries.append(_selected(chosen, select, precision))
            if not tries[-1]["passed"] and recipe.keep_fp32 is not None and inputs.ranking and inputs.fallback_layers:
                first = chosen
                chosen = _fallback(recipe.keep_fp32, inputs, Path(tmp), first, select, precision, tries, details)
                if recipe.runs_here:  # what the layers kept cost in speed, on this CPU
                    details["fallback_batch32_img_s"] = {
                        "every_layer_int8": speeds.get(first.label)
                        or batch32_throughput(first.path, inputs.calibration),
                        "shipped": batch32_throughput(chosen.path, inputs.calibration),
                    }
            details["selection"] = tries
        verdict, provider = gate(chosen.path, precision)
        reason = tries[-1].get("reason") if tries else None
        if reason:  # a fine-tuning that did not converge ships nothing, whatever the gate says
            verdict = replace(verdict, passed=False)
            details["rejected_because"] = reason
        if verdict.passed:
            os.replace(chosen.path, out)
    return Variant(
        precision=precision,
        file=str(out),
        status="passed" if verdict.passed else "rejected",
        test_top1=verdict.test_top1,
        provider=provider,
        gate=verdict,
        details=details,
    )


def _fallback(keep_fp32, inputs: Inputs, scratch: Path, failed: Candidate, select, precision, tries, details):
    """The fewest of the most INT8-sensitive layers kept in FP32 that meet the rule on the selection
    images (`fewest`: doubling, then bisecting; each try quantizes for real and is recorded in `tries`);
    when even `inputs.fallback_layers` miss it, the try that kept the most goes to the gate."""
    assert inputs.ranking is not None
    ranked = inputs.ranking()
    details["sensitivity"] = [{"layer": s.layer, "error_removed": s.error_removed} for s in ranked]
    made: dict[int, Candidate] = {}

    def accepts(k: int) -> bool:
        made[k] = keep_fp32(inputs, scratch, failed, tuple(s.layer for s in ranked[:k]))
        tries.append(_selected(made[k], select, precision))
        return bool(tries[-1]["passed"])

    k = fewest(accepts, min(inputs.fallback_layers, len(ranked)))
    chosen = made[k if k is not None else max(made)]
    details["kept_in_fp32"] = chosen.details["kept_in_fp32"]
    if "inputs_in_fp32" in chosen.details:
        details["inputs_in_fp32"] = chosen.details["inputs_in_fp32"]
    return chosen


def _selected(candidate: Candidate, select: Callable[[Path, str], dict], precision: str) -> dict:
    """One selection try: the candidate's numbers on the selection images; a QAT run that did not
    converge falls short with its reason."""
    entry = {"candidate": candidate.label, "kept_in_fp32": candidate.details.get("kept_in_fp32", [])}
    entry |= select(candidate.path, precision)
    training = candidate.details.get("qat")
    if training is not None and not training["converged"]:
        entry["passed"] = False
        entry["reason"] = (
            "quantization-aware fine-tuning did not converge: relative logit error vs FP32 on the calibration "
            f"images {training['relative_error_before']:.4f} before, {training['relative_error_after']:.4f} after"
        )
    return entry


def export_fused_checked(
    model: nn.Module, path: Path, meta: Deployable, opset: int, rows: list[Record], reference: np.ndarray
) -> dict:
    """The fused variant, fed the client's uint8 crops of the test images, must give FP32's top-1
    and logits within 1e-4 of the largest (else it is removed and the stage fails)."""
    export_fused(model, path, opset, meta)
    sess = onnx_runtime.session(path)
    crops = np.concatenate([resize_and_crop(r.path, meta.preprocess) for r in rows])
    logits = np.concatenate([sess.run(None, {"images": crops[i : i + 32]})[0] for i in range(0, len(crops), 32)])
    parity = check_parity(logits, reference)
    if not parity["passed"]:
        path.unlink()
        raise ExportError(f"{path}: the fused-preprocessing model disagrees with FP32 on the test images ({parity})")
    return {"file": str(path), "input": "uint8 [batch, crop, crop, 3]", "parity_vs_fp32": parity}
