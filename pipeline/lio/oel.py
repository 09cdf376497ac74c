"""Object-extent learning (docs/method.md, OEL): the pseudo mask M and the OEL head.

The pseudo mask compares every image with its P positives region by region. A naive
version holds all B*P similarity matrices (N^2 x N^2 each) at once; here each unordered
pair {i, j} gets one matrix, whose row maxima give phi(i, j) and whose column maxima give
phi(j, i), and the pairs are processed in chunks so peak memory stays bounded.

With gradient (`lio.target_grad`, the authors' released code), plain autograd through the
chunks would keep every similarity matrix alive for backward (several GB at the paper's
size). The gradient of max_j <f_i, f'_j> / C needs only the argmax j of each row and
column, so `_PseudoMask` saves those indices and recomputes nothing large.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Upper bound on the bytes of similarity matrices (and of backward's per-chunk feature
#: gathers) alive at once in `pseudo_mask`.
CHUNK_BYTES = 64 << 20


def pseudo_mask(feats: Tensor, positives: Tensor, chunk_bytes: int = CHUNK_BYTES, *, grad: bool = False) -> Tensor:
    """Mean over the positives of phi(f, f'_p), in float32 (float64 for float64 input) even
    inside an autocast region (a bf16 M is off by about 5% of its spatial contrast, which is
    the whole training signal; docs/method.md, OEL).

    feats: float [B, C, N, N] (any float dtype); positives: long [B, P] of batch indices.
    phi(f, f')[r, c] = max over (r', c') of <f[:, r, c], f'[:, r', c']> / C.
    grad=False: a constant target (detached). grad=True: differentiable with respect to
    `feats`, through both the image and its positives, as in the released code.
    Returns float32 (or float64) [B, N, N].
    """
    if feats.dim() != 4 or feats.shape[-1] != feats.shape[-2]:
        raise ValueError(f"feats must be [B, C, N, N], got {tuple(feats.shape)}")
    if positives.dim() != 2 or positives.shape[0] != feats.shape[0]:
        raise ValueError(f"positives must be [B, P] with B={feats.shape[0]}, got {tuple(positives.shape)}")
    b, _, n, _ = feats.shape
    with torch.autocast(feats.device.type, enabled=False):
        dtype = torch.promote_types(feats.dtype, torch.float32)
        f = (feats if grad else feats.detach()).to(dtype).flatten(2)  # [B, C, L]
        pairs = _pairs(positives.to(feats.device), b)
        if grad and torch.is_grad_enabled() and f.requires_grad:
            mask = _PseudoMask.apply(f, pairs, chunk_bytes)
        else:
            mask = _forward(f, pairs, chunk_bytes)[0]
    return mask.view(b, n, n)


class _Pairs:
    """The unordered pairs {first, second} of (anchor, positive) and how to read phi back:
    phi(anchor, positive) is row maxima of pair `inverse` when the anchor is `first`, else
    column maxima."""

    def __init__(self, first: Tensor, second: Tensor, inverse: Tensor, anchor_first: Tensor, p: int):
        self.first, self.second, self.inverse, self.anchor_first, self.p = first, second, inverse, anchor_first, p


def _pairs(positives: Tensor, b: int) -> _Pairs:
    p = positives.shape[1]
    anchor = torch.arange(b, device=positives.device).unsqueeze(1).expand(b, p)
    lo, hi = torch.minimum(anchor, positives), torch.maximum(anchor, positives)
    pairs, inverse = torch.unique((lo * b + hi).flatten(), return_inverse=True)
    return _Pairs(pairs // b, pairs % b, inverse, (anchor == lo).flatten(), p)


def _chunk(f: Tensor, chunk_bytes: int) -> int:
    _, c, cells = f.shape
    return max(1, chunk_bytes // (max(cells, c) * cells * f.element_size()))


def _forward(f: Tensor, pr: _Pairs, chunk_bytes: int) -> tuple[Tensor, Tensor, Tensor]:
    """M [B, L], and the argmax column of each row / row of each column per pair [K, L]."""
    b, c, cells = f.shape
    ft = f.transpose(1, 2)  # [B, L, C]
    k = len(pr.first)
    rows, cols = f.new_empty(k, cells), f.new_empty(k, cells)  # phi(first, second), phi(second, first)
    row_arg = torch.empty(k, cells, dtype=torch.long, device=f.device)
    col_arg = torch.empty_like(row_arg)
    step = _chunk(f, chunk_bytes)
    for s in range(0, k, step):
        sim = torch.bmm(ft[pr.first[s : s + step]], f[pr.second[s : s + step]])  # [K', L, L]
        torch.max(sim, dim=2, out=(rows[s : s + step], row_arg[s : s + step]))
        torch.max(sim, dim=1, out=(cols[s : s + step], col_arg[s : s + step]))
        del sim
    af = pr.anchor_first.unsqueeze(1)
    phi = torch.where(af, rows[pr.inverse], cols[pr.inverse]) / c  # [B*P, L]
    return phi.view(b, pr.p, cells).mean(dim=1), row_arg, col_arg


class _PseudoMask(torch.autograd.Function):
    """M with a gradient that needs only the argmax indices (float [B, C, L] in, [B, L] out).

    rows[k, r] = <f_first[:, r], f_second[:, row_arg[k, r]]> / C and cols[k, j] =
    <f_first[:, col_arg[k, j]], f_second[:, j]> / C. Writing their incoming gradients into one
    sparse L x L matrix W per pair (W[row_arg[r], r] += g_row[r], W[j, col_arg[j]] += g_col[j])
    makes the whole backward two batched matmuls: d f_first = f_second W, d f_second = f_first
    W^T (scatter on the features themselves is an order of magnitude slower on CPUs). Ties
    send the whole gradient to one argmax (autograd's amax splits it); with real-valued
    features ties have probability zero.
    """

    @staticmethod
    def forward(ctx, f: Tensor, pr: _Pairs, chunk_bytes: int) -> Tensor:
        mask, row_arg, col_arg = _forward(f, pr, chunk_bytes)
        ctx.save_for_backward(f, row_arg, col_arg)
        ctx.pr, ctx.chunk_bytes = pr, chunk_bytes
        return mask

    @staticmethod
    def backward(ctx, grad_mask: Tensor):
        f, row_arg, col_arg = ctx.saved_tensors
        pr: _Pairs = ctx.pr
        b, c, cells = f.shape
        k = len(pr.first)
        # dM/dphi = 1/P, dphi/dsim = 1/C; route each (anchor, positive) to its pair's rows or columns.
        g_phi = (grad_mask.unsqueeze(1).expand(b, pr.p, cells).reshape(b * pr.p, cells) / (pr.p * c)).contiguous()
        af = pr.anchor_first
        g_rows = f.new_zeros(k, cells).index_add_(0, pr.inverse[af], g_phi[af])
        g_cols = f.new_zeros(k, cells).index_add_(0, pr.inverse[~af], g_phi[~af])
        cell = torch.arange(cells, device=f.device)
        grad = torch.zeros_like(f).flatten(1)  # [B, C*L]
        step = _chunk(f, ctx.chunk_bytes)
        for s in range(0, k, step):
            first, second = pr.first[s : s + step], pr.second[s : s + step]
            w = f.new_zeros(len(first), cells * cells)  # W[k] flattened, row-major [L, L]
            w.scatter_add_(1, row_arg[s : s + step] * cells + cell, g_rows[s : s + step])
            w.scatter_add_(1, cell * cells + col_arg[s : s + step], g_cols[s : s + step])
            w = w.view(-1, cells, cells)
            g_first = torch.bmm(f[second], w)  # [K', C, L]
            g_second = torch.bmm(f[first], w.transpose(1, 2))
            del w
            # sum each pair's gradient into its images: a [B, K'] one-hot matmul (index_add_ is slow on CPUs)
            owners = torch.arange(b, device=f.device).unsqueeze(1)
            grad += (owners == first).to(f.dtype) @ g_first.flatten(1)
            grad += (owners == second).to(f.dtype) @ g_second.flatten(1)
        return grad.view_as(f), None, None


class OELHead(nn.Module):
    """One 1x1 convolution C -> 1: the predicted object extent m' (no activation)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, feats: Tensor) -> Tensor:
        return self.conv(feats).squeeze(1)  # [B, N, N]
