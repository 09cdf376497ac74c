"""`train.compile`: the LIO training forward as one graph, equal to eager, with eager as the fallback."""

import warnings

import pytest
import torch

from pipeline.lio import LIOModel, PairIndex, pair_index, pseudo_mask
from pipeline.lio.sampler import code_positives, group_positives
from pipeline.train.compile import CompiledStep, unwrap, wants_compile


def layouts():
    g = torch.Generator().manual_seed(0)
    b = 10
    arbitrary = torch.stack([torch.randperm(b, generator=g)[:3] for _ in range(b)])
    arbitrary = torch.where(arbitrary == torch.arange(b)[:, None], (arbitrary + 1) % b, arbitrary)
    return [group_positives(4, 3), code_positives(4, 3), group_positives(3, 1), arbitrary]


@pytest.mark.parametrize("positives", layouts(), ids=["groups", "code", "pairs", "arbitrary"])
def test_pair_index_routes_every_anchor_positive_entry(positives):
    """Independent of how pair_index computes it: every (anchor, positive) entry names its own
    pair, pairs are unique, and the row/column routes are exactly the entries of each side."""
    pr = pair_index(positives)
    b, p = positives.shape
    pairs = list(zip(pr.first.tolist(), pr.second.tolist()))
    assert len(set(pairs)) == len(pairs) and all(a < c for a, c in pairs)
    rows, cols = [], []
    for e in range(b * p):
        anchor, other = e // p, int(positives[e // p, e % p])
        k = int(pr.inverse[e])
        assert {pr.first[k].item(), pr.second[k].item()} == {anchor, other}
        assert bool(pr.anchor_first[e]) == (pr.first[k].item() == anchor)
        (rows if pr.first[k].item() == anchor else cols).append((e, k))
    assert list(zip(pr.row_src.tolist(), pr.row_dst.tolist())) == rows
    assert list(zip(pr.col_src.tolist(), pr.col_dst.tolist())) == cols


@pytest.mark.parametrize("positives", layouts(), ids=["groups", "code", "pairs", "arbitrary"])
def test_pair_index_gives_the_same_mask_and_gradient_as_the_positives(positives):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(len(positives), 6, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(len(positives), 3, 3, generator=g, dtype=torch.float64)
    m1 = pseudo_mask(feats, positives, grad=True)
    (g1,) = torch.autograd.grad((m1 * weight).sum(), feats)
    m2 = pseudo_mask(feats, pair_index(positives), chunk_bytes=1, grad=True)  # one pair per chunk
    (g2,) = torch.autograd.grad((m2 * weight).sum(), feats)
    assert torch.equal(m1, m2)
    assert torch.allclose(g1, g2, rtol=0, atol=1e-12)


def tiny_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 64, 64, generator=g)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return x, y, pair_index(group_positives(2, 3))


def tiny_model():
    torch.manual_seed(0)
    return LIOModel("resnet18", 2, ["layer2", "layer3", "layer4"]).train()


def test_the_lio_training_forward_is_one_graph():
    x, y, pr = tiny_batch()
    explained = torch._dynamo.explain(tiny_model())(x, y, pr)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def losses_and_grads(model, step, x, y, pr):
    model.zero_grad(set_to_none=True)
    out = step(x, y, pr)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_compiled_step_equals_eager():
    """Inductor (C++ on the CPU) compiles the whole forward and backward; losses and every
    gradient match eager within float tolerance."""
    x, y, pr = tiny_batch()
    model = tiny_model()
    eager, g_eager = losses_and_grads(model, model, x, y, pr)
    step = CompiledStep(model)
    compiled, g_compiled = losses_and_grads(model, step, x, y, pr)
    assert step.compiled
    assert set(compiled.parts) == set(eager.parts)
    for k in eager.parts:
        assert torch.allclose(compiled.parts[k], eager.parts[k], rtol=1e-4, atol=1e-5), k
    assert g_compiled.keys() == g_eager.keys()
    for n, g in g_eager.items():
        assert torch.allclose(g_compiled[n], g, rtol=1e-3, atol=1e-5), n


def test_aot_traced_step_equals_eager():
    """The fast check of the same: AOTAutograd traces forward and the custom backward of M
    as graphs (no code generation); every gradient matches eager."""
    x, y, pr = tiny_batch()
    model = tiny_model()
    eager, g_eager = losses_and_grads(model, model, x, y, pr)
    step = CompiledStep(model, backend="aot_eager")
    traced, g_traced = losses_and_grads(model, step, x, y, pr)
    assert step.compiled
    assert torch.allclose(traced.loss, eager.loss, rtol=1e-5)
    for n, g in g_eager.items():
        assert torch.allclose(g_traced[n], g, rtol=1e-4, atol=1e-6), n


def failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler on this machine")


def test_a_step_that_fails_to_compile_warns_once_and_trains_eager():
    x, y, pr = tiny_batch()
    model = tiny_model()
    eager, _ = losses_and_grads(model, model, x, y, pr)
    step = CompiledStep(model, backend=failing_backend)
    with pytest.warns(UserWarning, match=r"train.compile: torch.compile failed .*training eager") as caught:
        out, _ = losses_and_grads(model, step, x, y, pr)
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert not step.compiled
    assert torch.equal(out.loss, eager.loss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: eager from now on
        assert torch.equal(step(x, y, pr).loss, eager.loss)


def test_auto_compiles_on_cuda_only_and_unwrap_finds_the_model():
    assert wants_compile("auto", torch.device("cuda", 0)) and not wants_compile("auto", torch.device("cpu"))
    assert wants_compile("true", torch.device("cpu")) and not wants_compile("false", torch.device("cuda"))
    model = tiny_model()
    assert unwrap(CompiledStep(model, backend="eager")) is model
    assert isinstance(pair_index(group_positives(1, 1)), PairIndex)


def test_ddp_wraps_the_compiled_step(tmp_path):
    """DistributedDataParallel (gloo, one rank in this process) around the compiled step, as the
    training loop builds it under torchrun: same loss and gradients as eager, reduced by DDP's hooks."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    x, y, pr = tiny_batch()
    model = tiny_model()
    eager, g_eager = losses_and_grads(model, model, x, y, pr)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = DistributedDataParallel(CompiledStep(model, backend="aot_eager"))
        out, g_ddp = losses_and_grads(model, net, x, y, pr)
    finally:
        dist.destroy_process_group()
    assert unwrap(net) is model
    assert torch.allclose(out.loss, eager.loss, rtol=1e-5)
    for n, g in g_eager.items():
        assert torch.allclose(g_ddp[n], g, rtol=1e-4, atol=1e-6), n
