"""The three fixed functions of docs/method.md (the fixed signatures) against hand-worked values and an
independent, loop-by-loop implementation of the formulas of docs/method.md."""

import math

import pytest
import torch

from pipeline.lio.oel import pseudo_mask
from pipeline.lio.sampler import group_positives
from pipeline.lio.scl import polar_targets, scl_loss


# ------------------------------------------------------------ independent references
def phi_loop(f, g):
    c, n, _ = f.shape
    out = torch.empty(n, n, dtype=torch.float64)
    for r in range(n):
        for col in range(n):
            out[r, col] = (
                max(float(f[:, r, col].double() @ g[:, r2, c2].double()) for r2 in range(n) for c2 in range(n)) / c
            )
    return out


def pseudo_mask_loop(feats, positives):
    return torch.stack(
        [torch.stack([phi_loop(feats[i], feats[j]) for j in positives[i].tolist()]).mean(0) for i in range(len(feats))]
    )


def scl_loss_loop(pd, pa, d, a, w):
    total = 0.0
    for b in range(len(pd)):
        ws = w[b].flatten().double().tolist()
        sw = sum(ws)
        dis = sum(wi * (x - y) ** 2 for wi, x, y in zip(ws, pd[b].flatten().tolist(), d[b].flatten().tolist()))
        gaps = []
        for x, y in zip(pa[b].flatten().tolist(), a[b].flatten().tolist()):
            g = x - y
            gaps.append(g + 1 if g < 0 else g)
        mean = sum(wi * g for wi, g in zip(ws, gaps)) / sw
        ang = sum(wi * (g - mean) ** 2 for wi, g in zip(ws, gaps))
        total += math.sqrt(dis / sw) + math.sqrt(ang / sw)
    return total / len(pd)


# ------------------------------------------------------------ OEL
def test_pseudo_mask_by_hand():
    # C = 2, N = 2. Image 0 cells: (1,0) (0,1) / (1,1) (0,0); image 1 cells: (2,0) (0,0) / (0,0) (0,3).
    f0 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    f1 = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])
    feats = torch.stack([f0, f1])
    positives = torch.tensor([[1], [0]])
    m = pseudo_mask(feats, positives)
    # phi(0,1)[r,c] = max over image-1 cells of the dot product, / 2:
    # (1,0)->max(2,0,0,0)=2; (0,1)->max(0,0,0,3)=3; (1,1)->max(2,0,0,3)=3; (0,0)->0
    assert torch.allclose(m[0], torch.tensor([[1.0, 1.5], [1.5, 0.0]]))
    # phi(1,0): (2,0)->max(2,0,2,0)=2; (0,0)->0; (0,0)->0; (0,3)->max(0,3,3,0)=3
    assert torch.allclose(m[1], torch.tensor([[1.0, 0.0], [0.0, 1.5]]))


@pytest.mark.parametrize("b,c,n,p", [(4, 8, 2, 3), (6, 16, 3, 2), (8, 5, 4, 3), (3, 7, 5, 1)])
def test_pseudo_mask_matches_loop(b, c, n, p):
    g = torch.Generator().manual_seed(b * 100 + n)
    feats = torch.randn(b, c, n, n, generator=g)
    # arbitrary positives, including repeats and the anchor itself
    positives = torch.randint(0, b, (b, p), generator=g)
    want = pseudo_mask_loop(feats, positives).float()
    for chunk in (1, 1 << 30):  # one pair per chunk, and everything at once
        got = pseudo_mask(feats, positives, chunk_bytes=chunk)
        assert got.shape == (b, n, n)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_pseudo_mask_has_no_gradient():
    feats = torch.randn(4, 3, 2, 2, requires_grad=True)
    m = pseudo_mask(feats, torch.tensor([[1], [0], [3], [2]]))
    assert not m.requires_grad


def pseudo_mask_naive(feats, positives):
    """Unchunked, with autograd through amax: every B*P similarity matrix at once."""
    b, c, n, _ = feats.shape
    f = feats.flatten(2)
    sim = torch.einsum("bcl,bpcm->bplm", f, f[positives])
    return (sim.amax(dim=3) / c).mean(1).view(b, n, n)


GRAD_CASES = [
    # (b, c, n, positives): groups of P+1 (each pair seen from both sides), repeats, the anchor itself
    (4, 3, 2, [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]),
    (3, 4, 3, [[1, 1], [0, 0], [2, 0]]),
    (5, 2, 2, [[4], [3], [2], [1], [0]]),
]


@pytest.mark.parametrize("b,c,n,positives", GRAD_CASES)
@pytest.mark.parametrize("chunk", [1, 1 << 30])
def test_pseudo_mask_gradient_matches_naive_autograd(b, c, n, positives, chunk):
    g = torch.Generator().manual_seed(b * 10 + c)
    feats = torch.randn(b, c, n, n, generator=g, dtype=torch.float64)
    pos = torch.tensor(positives)
    weights = torch.randn(b, n, n, generator=g, dtype=torch.float64)
    # the custom backward against autograd through the naive, unchunked version ...
    x = feats.clone().requires_grad_(True)
    (pseudo_mask(x, pos, chunk_bytes=chunk, grad=True) * weights).sum().backward()
    y = feats.clone().requires_grad_(True)
    (pseudo_mask_naive(y, pos) * weights).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
    assert x.grad.abs().sum() > 0
    # ... and against finite differences, in float64
    z = feats.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pseudo_mask(t, pos, chunk_bytes=chunk, grad=True), (z,))


def test_pseudo_mask_with_gradient_keeps_its_value():
    feats = torch.randn(8, 5, 3, 3)
    pos = group_positives(2, 3)
    plain = pseudo_mask(feats, pos)
    live = pseudo_mask(feats.clone().requires_grad_(True), pos, grad=True)
    assert live.requires_grad
    torch.testing.assert_close(live.detach(), plain, rtol=0, atol=0)


# ------------------------------------------------------------ SCL targets
def test_polar_targets_by_hand():
    dist, angle = polar_targets(torch.tensor([[1, 1], [0, 2]]), 3)
    s = math.sqrt(2) * 3
    # reference at the centre: corners are sqrt(2) away, edges 1
    assert dist[0, 1, 1] == 0
    assert dist[0, 0, 0].item() == pytest.approx(math.sqrt(2) / s)
    assert dist[0, 0, 1].item() == pytest.approx(1 / s)
    # angle = (atan2(r0 - r, c0 - c) + pi) / 2pi
    assert angle[0, 1, 2].item() == pytest.approx((math.atan2(0, -1) + math.pi) / (2 * math.pi))  # right of ref: 1.0
    assert angle[0, 1, 0].item() == pytest.approx(0.5)  # left of ref: atan2(0, 1) = 0
    assert angle[0, 0, 1].item() == pytest.approx(0.75)  # above ref: atan2(1, 0) = pi/2
    assert angle[0, 2, 1].item() == pytest.approx(0.25)  # below ref: atan2(-1, 0) = -pi/2
    # reference at the top-right corner
    assert dist[1, 2, 0].item() == pytest.approx(math.sqrt(8) / s)
    assert angle[1, 2, 0].item() == pytest.approx((math.atan2(-2, 2) + math.pi) / (2 * math.pi))


def test_polar_targets_match_formula():
    n = 5
    ref = torch.randint(0, n, (7, 2), generator=torch.Generator().manual_seed(1))
    dist, angle = polar_targets(ref, n)
    for b in range(7):
        r0, c0 = ref[b].tolist()
        for r in range(n):
            for c in range(n):
                d = math.sqrt((r0 - r) ** 2 + (c0 - c) ** 2) / (math.sqrt(2) * n)
                a = (math.atan2(r0 - r, c0 - c) + math.pi) / (2 * math.pi)
                assert dist[b, r, c].item() == pytest.approx(d, rel=1e-5, abs=1e-7)
                assert angle[b, r, c].item() == pytest.approx(a, rel=1e-5, abs=1e-7)


# ------------------------------------------------------------ SCL loss
def test_scl_loss_by_hand():
    # N = 2, one image, weights only on two cells.
    w = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    d = torch.zeros(1, 2, 2)
    pd = torch.tensor([[[0.3, 0.1], [5.0, 5.0]]])
    a = torch.tensor([[[0.5, 0.5], [0.0, 0.0]]])
    pa = torch.tensor([[[0.7, 0.2], [0.9, 0.9]]])  # gaps 0.2 and -0.3 -> 0.7
    l_dis = math.sqrt((0.09 + 0.01) / 2)
    l_ang = math.sqrt(((0.2 - 0.45) ** 2 + (0.7 - 0.45) ** 2) / 2)  # mean gap 0.45
    assert scl_loss(pd, pa, d, a, w).item() == pytest.approx(l_dis + l_ang, rel=1e-5)


def test_scl_loss_wraps_the_angle_gap_by_hand():
    # N = 2, three weighted cells; gaps 0.1, 0.2 and -0.1, which wraps to 0.9 (the same direction
    # error as +0.9 turns): mean 0.4, deviations -0.3, -0.2, 0.5. Unwrapped, the spread would be 0.125.
    w = torch.tensor([[[1.0, 1.0], [1.0, 0.0]]])
    d = pd = torch.zeros(1, 2, 2)
    a = torch.tensor([[[0.05, 0.5], [0.15, 0.0]]])
    pa = torch.tensor([[[0.15, 0.7], [0.05, 0.3]]])
    l_ang = math.sqrt((0.3**2 + 0.2**2 + 0.5**2) / 3)
    l_dis = math.sqrt(1e-8)  # d = pd: only the epsilon inside the root
    assert scl_loss(pd, pa, d, a, w).item() == pytest.approx(l_dis + l_ang, rel=1e-5)


@pytest.mark.parametrize("offset", [0.3, 0.6, 0.95])
def test_scl_loss_ignores_a_constant_angle_offset(offset):
    """Rotation invariance over the whole circle: predicted angles that are the targets turned by a
    constant, wrapping past 1 for some cells, cost nothing."""
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 3, generator=g)  # the full [0, 1): (a + offset) % 1 wraps for some cells
    assert ((a + offset) >= 1).any() and ((a + offset) < 1).any()
    w = torch.rand(2, 3, 3, generator=g)
    d = torch.rand(2, 3, 3, generator=g)
    loss = scl_loss(d, (a + offset) % 1.0, d, a, w)
    assert loss.item() < 1e-3  # both terms vanish but for the epsilon inside the square roots


@pytest.mark.parametrize("b,n", [(1, 2), (4, 3), (3, 7)])
def test_scl_loss_matches_loop(b, n):
    g = torch.Generator().manual_seed(b * 10 + n)
    pd, pa, d, a = (torch.rand(b, n, n, generator=g) for _ in range(4))
    w = torch.relu(torch.randn(b, n, n, generator=g)) + 0.01
    got = scl_loss(pd, pa, d, a, w).item()
    assert got == pytest.approx(scl_loss_loop(pd, pa, d, a, w), rel=1e-5)


def test_scl_loss_gives_no_gradient_to_weights():
    w = torch.rand(2, 3, 3, requires_grad=True)
    pd = torch.rand(2, 3, 3, requires_grad=True)
    scl_loss(pd, torch.rand(2, 3, 3), torch.rand(2, 3, 3), torch.rand(2, 3, 3), w).backward()
    assert w.grad is None
    assert pd.grad is not None and pd.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pseudo_mask_is_float32_inside_autocast(dtype):
    """M is the OEL target: under bf16 autocast it must equal the float32 computation."""
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(8, 64, 7, 7, generator=g).to(dtype)
    pos = group_positives(2, 3)
    plain = pseudo_mask(feats.float(), pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = pseudo_mask(feats, pos)
        d, a = polar_targets(torch.tensor([[1, 2]]), 7)
    assert mixed.dtype == torch.float32 and torch.equal(mixed, plain)
    assert d.dtype == a.dtype == torch.float32
