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

from typing import NamedTuple

import torch
from torch import Tensor, nn

#: Upper bound on the bytes of similarity matrices (and of backward's per-chunk feature
#: gathers) alive at once in `pseudo_mask`.
CHUNK_BYTES = 64 << 20


def pseudo_mask(
    feats: Tensor, positives: Tensor | PairIndex, chunk_bytes: int = CHUNK_BYTES, *, grad: bool = False
) -> Tensor:
    """Mean over the positives of phi(f, f'_p), in float32 (float64 for float64 input) even
    inside an autocast region (a bf16 M is off by about 5% of its spatial contrast, which is
    the whole training signal; docs/method.md, OEL).

    feats: float [B, C, N, N] (any float dtype); positives: long [B, P] of batch indices, or
    their `pair_index` (built once per batch layout: then nothing here depends on the data's
    values, so the step compiles as one graph and never waits for the device).
    phi(f, f')[r, c] = max over (r', c') of <f[:, r, c], f'[:, r', c']> / C.
    grad=False: a constant target (detached). grad=True: differentiable with respect to
    `feats`, through both the image and its positives, as in the released code.
    Returns float32 (or float64) [B, N, N].
    """
    if feats.dim() != 4 or feats.shape[-1] != feats.shape[-2]:
        raise ValueError(f"feats must be [B, C, N, N], got {tuple(feats.shape)}")
    pr = positives if isinstance(positives, PairIndex) else pair_index(positives)
    if pr.positives.dim() != 2 or pr.positives.shape[0] != feats.shape[0]:
        raise ValueError(f"positives must be [B, P] with B={feats.shape[0]}, got {tuple(pr.positives.shape)}")
    b, _, n, _ = feats.shape
    pr = pr.to(feats.device)
    with torch.autocast(feats.device.type, enabled=False):
        dtype = torch.promote_types(feats.dtype, torch.float32)
        f = (feats if grad else feats.detach()).to(dtype).flatten(2)  # [B, C, L]
        if grad and torch.is_grad_enabled() and f.requires_grad:
            mask = _PseudoMask.apply(f, *pr[1:], chunk_bytes)
        else:
            mask = _forward(f, pr.first, pr.second, pr.inverse, pr.anchor_first, pr.positives.shape[1], chunk_bytes)[0]
    return mask.view(b, n, n)


class PairIndex(NamedTuple):
    """The unordered pairs {first, second} of (anchor, positive), and how to read phi back:
    phi(anchor, positive) is the row maxima of pair `inverse` when the anchor is `first`, else
    its column maxima. `row_*`/`col_*` route the (anchor, positive) entries of each kind to
    their pairs in backward, so that no step indexes with a boolean mask (a host sync)."""

    positives: Tensor  # long [B, P]
    first: Tensor  # long [K]
    second: Tensor  # long [K]
    inverse: Tensor  # long [B*P]: the pair of each (anchor, positive)
    anchor_first: Tensor  # bool [B*P]
    row_src: Tensor  # long: the (anchor, positive) entries whose anchor is its pair's first ...
    row_dst: Tensor  # ... and their pairs
    col_src: Tensor  # long: the other entries ...
    col_dst: Tensor  # ... and their pairs

    def to(self, device: torch.device) -> PairIndex:
        return self if self.first.device == device else PairIndex(*(t.to(device) for t in self))


def pair_index(positives: Tensor) -> PairIndex:
    """The pair bookkeeping of a [B, P] positives index, computed on the host (once per batch
    layout: the sampler fixes it, so the training loop caches it per number of groups)."""
    positives = positives.detach().cpu().long()
    b, p = positives.shape
    anchor = torch.arange(b).unsqueeze(1).expand(b, p)
    lo, hi = torch.minimum(anchor, positives), torch.maximum(anchor, positives)
    pairs, inverse = torch.unique((lo * b + hi).flatten(), return_inverse=True)
    anchor_first = (anchor == lo).flatten()
    row_src, col_src = anchor_first.nonzero().flatten(), (~anchor_first).nonzero().flatten()
    return PairIndex(
        positives, pairs // b, pairs % b, inverse, anchor_first, row_src, inverse[row_src], col_src, inverse[col_src]
    )


def _chunk(f: Tensor, chunk_bytes: int) -> int:
    _, c, cells = f.shape
    return max(1, chunk_bytes // (max(cells, c) * cells * f.element_size()))


def _forward(
    f: Tensor, first: Tensor, second: Tensor, inverse: Tensor, anchor_first: Tensor, p: int, chunk_bytes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """M [B, L], and the argmax column of each row / row of each column per pair [K, L]."""
    b, c, cells = f.shape
    ft = f.transpose(1, 2)  # [B, L, C]
    step = _chunk(f, chunk_bytes)
    rows, cols, row_arg, col_arg = [], [], [], []  # phi(first, second), phi(second, first), their argmax
    for s in range(0, first.shape[0], step):
        sim = torch.bmm(ft[first[s : s + step]], f[second[s : s + step]])  # [K', L, L]
        r, c_ = sim.max(dim=2), sim.max(dim=1)
        rows.append(r.values)
        row_arg.append(r.indices)
        cols.append(c_.values)
        col_arg.append(c_.indices)
        del sim
    phi = torch.where(anchor_first.unsqueeze(1), torch.cat(rows)[inverse], torch.cat(cols)[inverse]) / c  # [B*P, L]
    return phi.view(b, p, cells).mean(dim=1), torch.cat(row_arg), torch.cat(col_arg)


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
    def forward(ctx, f, first, second, inverse, anchor_first, row_src, row_dst, col_src, col_dst, chunk_bytes):
        p = inverse.shape[0] // f.shape[0]
        mask, row_arg, col_arg = _forward(f, first, second, inverse, anchor_first, p, chunk_bytes)
        ctx.save_for_backward(f, row_arg, col_arg, first, second, row_src, row_dst, col_src, col_dst)
        ctx.p, ctx.chunk_bytes = p, chunk_bytes
        return mask

    @staticmethod
    def backward(ctx, grad_mask: Tensor):
        f, row_arg, col_arg, first_all, second_all, row_src, row_dst, col_src, col_dst = ctx.saved_tensors
        b, c, cells = f.shape
        p, k = ctx.p, first_all.shape[0]
        # dM/dphi = 1/P, dphi/dsim = 1/C; route each (anchor, positive) to its pair's rows or columns.
        g_phi = grad_mask.unsqueeze(1).expand(b, p, cells).reshape(b * p, cells) / (p * c)
        g_rows = f.new_zeros(k, cells).index_add_(0, row_dst, g_phi[row_src])
        g_cols = f.new_zeros(k, cells).index_add_(0, col_dst, g_phi[col_src])
        cell = torch.arange(cells, device=f.device)
        owners = torch.arange(b, device=f.device).unsqueeze(1)
        grad = f.new_zeros(b, c * cells)
        step = _chunk(f, ctx.chunk_bytes)
        for s in range(0, k, step):
            first, second = first_all[s : s + step], second_all[s : s + step]
            w = f.new_zeros(first.shape[0], cells * cells)  # W[k] flattened, row-major [L, L]
            w.scatter_add_(1, row_arg[s : s + step] * cells + cell, g_rows[s : s + step])
            w.scatter_add_(1, cell * cells + col_arg[s : s + step], g_cols[s : s + step])
            w = w.view(-1, cells, cells)
            g_first = torch.bmm(f[second], w)  # [K', C, L]
            g_second = torch.bmm(f[first], w.transpose(1, 2))
            del w
            # sum each pair's gradient into its images: a [B, K'] one-hot matmul (index_add_ is slow on CPUs)
            grad += (owners == first).to(f.dtype) @ g_first.flatten(1)
            grad += (owners == second).to(f.dtype) @ g_second.flatten(1)
        return grad.view_as(f), None, None, None, None, None, None, None, None, None


class OELHead(nn.Module):
    """One 1x1 convolution C -> 1: the predicted object extent m' (no activation)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, feats: Tensor) -> Tensor:
        return self.conv(feats).squeeze(1)  # [B, N, N]
