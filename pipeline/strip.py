"""Head stripping and the parity proof (docs/method.md, "Strip and parity").

The deployable model is `torchvision.models.<arch>(num_classes=K)` with the trained
backbone weights and nothing more. Five checks prove the trained model's classification
path is that plain model; each failure comes with a readable diff.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.fx
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.artifacts.deployable import Deployable
from pipeline.artifacts.parity import Check, ParityProof
from pipeline.backbone import build_backbone
from pipeline.core.errors import PipelineError
from pipeline.core.paths import metadata, require
from pipeline.data.dataset import load_image
from pipeline.data.manifest import read_manifest
from pipeline.data.transforms import eval_preset
from pipeline.lio.checkpoint import TrainedModel
from pipeline.weights import save_torch


class ParityError(PipelineError, RuntimeError):
    pass


class ClassificationPath(nn.Module):
    """The trained model called as inference calls it: images in, logits out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


def _tensors(module: nn.Module) -> dict[str, tuple[str, tuple, str]]:
    out = {n: ("parameter", tuple(p.shape), str(p.dtype)) for n, p in module.named_parameters()}
    out.update({n: ("buffer", tuple(b.shape), str(b.dtype)) for n, b in module.named_buffers()})
    return out


def check_strict_load(plain: nn.Module, stripped: dict[str, Tensor]) -> Check:
    try:
        plain.load_state_dict(stripped, strict=True)
    except RuntimeError as e:
        return Check("strict_load", False, {"error": str(e).splitlines()[0]}, str(e).splitlines()[1:])
    return Check("strict_load", True, {"keys": len(stripped)})


def check_names_shapes_dtypes(deployed: nn.Module, plain: nn.Module) -> Check:
    got, want = _tensors(deployed), _tensors(plain)
    diff = [f"- {n}: {want[n]} (missing)" for n in want if n not in got]
    diff += [f"+ {n}: {got[n]} (extra)" for n in got if n not in want]
    diff += [f"~ {n}: {got[n]} != plain {want[n]}" for n in want if n in got and got[n] != want[n]]
    return Check("names_shapes_dtypes", not diff, {"tensors": len(want)}, diff)


def graph_lines(module: nn.Module, prefix: str = "") -> list[str]:
    """One line per traced node, node references by position, module paths without `prefix`."""
    graph = torch.fx.symbolic_trace(module).graph
    index = {node: i for i, node in enumerate(graph.nodes)}

    def show(a):
        if isinstance(a, torch.fx.Node):
            return f"%{index[a]}"
        if isinstance(a, (list, tuple)):
            return "(" + ", ".join(show(x) for x in a) + ")"
        if isinstance(a, dict):
            return "{" + ", ".join(f"{k}: {show(v)}" for k, v in a.items()) + "}"
        return repr(a)

    lines = []
    for node in graph.nodes:
        target = node.target
        if isinstance(target, str):
            target = target.removeprefix(prefix)
        else:
            target = getattr(target, "__qualname__", getattr(target, "__name__", str(target)))
        name = "input" if node.op == "placeholder" else target
        lines.append(f"%{index[node]} {node.op} {name} {show(node.args)} {show(node.kwargs)}")
    return lines


def check_graph(trained_path: nn.Module, plain: nn.Module, prefix: str) -> Check:
    got, want = graph_lines(trained_path, prefix), graph_lines(plain)
    diff = list(difflib.unified_diff(want, got, "plain torchvision", "trained classification path", lineterm="", n=1))
    return Check("graph", got == want, {"nodes": len(want)}, diff[:60])


def check_logits(trained_path: nn.Module, plain: nn.Module, inputs: dict[str, Tensor]) -> Check:
    detail, diff = {}, []
    with torch.no_grad():
        for name, x in inputs.items():
            a, b = trained_path(x), plain(x)
            same = torch.equal(a, b)
            detail[name] = {"images": len(x), "bitwise_equal": same, "max_abs_diff": (a - b).abs().max().item()}
            if not same:
                diff.append(f"{name}: logits differ, max |diff| = {detail[name]['max_abs_diff']:.3g}")
    return Check("logits_bitwise", not diff, detail, diff)


def multiply_adds(module: nn.Module, x: Tensor) -> int:
    """Multiply-adds of one forward of x (FlopCounterMode counts 2 FLOPs per multiply-add)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


def check_cost(trained_path: nn.Module, deployed: nn.Module, plain: nn.Module, x: Tensor) -> Check:
    """The deployed weights' size and the classification path's compute equal the plain model's."""
    p_got, p_want = (sum(p.numel() for p in m.parameters()) for m in (deployed, plain))
    m_got, m_want = multiply_adds(trained_path, x), multiply_adds(plain, x)
    detail = {"params": p_got, "plain_params": p_want, "macs": m_got, "plain_macs": m_want, "input": list(x.shape)}
    diff = []
    if p_got != p_want:
        diff.append(f"parameters: {p_got} != plain {p_want}")
    if m_got != m_want:
        diff.append(f"multiply-adds: {m_got} != plain {m_want}")
    return Check("params_macs", not diff, detail, diff)


def prove_parity(
    trained: nn.Module,
    deployed: nn.Module,
    make_plain: Callable[[], nn.Module],
    real_images: Tensor,
    input_size: int,
    prefix: str = "model.backbone.",
) -> tuple[list[Check], dict[str, Tensor]]:
    """Runs the five checks on CPU float32 in eval mode; returns them and the stripped state dict.

    `trained` is the whole training model (its plain call is the classification path),
    `deployed` the module whose weights ship, `make_plain` builds a fresh torchvision model.
    """
    trained = trained.cpu().float().eval()
    path = ClassificationPath(trained).eval()
    stripped = {k: v.detach().clone().contiguous() for k, v in deployed.state_dict().items()}

    def fresh() -> nn.Module:
        return make_plain().eval()

    plain = fresh()
    checks = [check_strict_load(plain, stripped), check_names_shapes_dtypes(deployed, fresh())]
    checks.append(check_graph(path, fresh(), prefix))
    generator = torch.Generator().manual_seed(0)
    random = torch.randn(4, 3, input_size, input_size, generator=generator)
    if checks[0].passed:
        checks.append(check_logits(path, plain, {"random_inputs": random, "test_images": real_images}))
    else:
        checks.append(Check("logits_bitwise", False, {"skipped": "the stripped weights do not load (strict_load)"}))
    checks.append(check_cost(path, deployed, fresh(), random[:1]))
    return checks, stripped


def strip(trained: Path, prepared: Path, out: Path, parity_path: Path, test_images: int = 8) -> ParityProof:
    """models/lio.pt -> the plain deployable `out` (+ its metadata), if and only if parity holds.

    The parity report is written either way; a failure leaves no deployable file.
    """
    record, model = TrainedModel.load(require(trained, "train"))
    rows, _ = read_manifest(require(prepared, "prepare"))
    spec = record.preprocess
    preset = eval_preset(spec)
    test = [r for r in rows if r.split == "test"][:test_images]
    images = torch.stack([preset(load_image(r.path, r.crop_bottom)) for r in test])
    arch, k = record.arch, record.num_classes
    checks, stripped = prove_parity(model, model.plain(), lambda: build_backbone(arch, k), images, spec.crop)
    proof = ParityProof.of(checks)
    proof.save(parity_path)
    if not proof.passed:
        Path(out).unlink(missing_ok=True)
        raise ParityError(f"parity failed, no deployable model written (details in {parity_path}):\n{proof.explain()}")
    meta = Deployable(
        arch=arch,
        num_classes=k,
        classes=record.classes,
        preprocess=spec,
        training=record.training,
        summary=record.summary,
    )
    save_torch(stripped, out)
    meta.save(metadata(out))
    return proof
