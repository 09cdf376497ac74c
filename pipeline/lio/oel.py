"""Object-extent learning (docs/method.md, OEL): the pseudo mask M and the OEL head.

The pseudo mask compares every image with its P positives region by region. A naive
version holds all B*P similarity matrices (N^2 x N^2 each) at once; here each unordered
pair {i, j} gets one matrix, whose row maxima give phi(i, j) and whose column maxima give
phi(j, i), and the pairs are processed in chunks so peak memory stays bounded.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Upper bound on the bytes of similarity matrices alive at once in `pseudo_mask`.
CHUNK_BYTES = 64 << 20


@torch.no_grad()
def pseudo_mask(feats: Tensor, positives: Tensor, chunk_bytes: int = CHUNK_BYTES) -> Tensor:
    """Mean over the positives of phi(f, f'_p); a target, so computed without gradient, and
    in float32 even inside an autocast region (a bf16 M is off by about 5% of its spatial
    contrast, which is the whole training signal; docs/method.md, OEL).

    feats: float [B, C, N, N] (any float dtype); positives: long [B, P] of batch indices.
    phi(f, f')[r, c] = max over (r', c') of <f[:, r, c], f'[:, r', c']> / C.
    Returns float [B, N, N].
    """
    if feats.dim() != 4 or feats.shape[-1] != feats.shape[-2]:
        raise ValueError(f"feats must be [B, C, N, N], got {tuple(feats.shape)}")
    if positives.dim() != 2 or positives.shape[0] != feats.shape[0]:
        raise ValueError(f"positives must be [B, P] with B={feats.shape[0]}, got {tuple(positives.shape)}")
    with torch.autocast(feats.device.type, enabled=False):
        return _pseudo_mask(feats.detach().float(), positives, chunk_bytes)


def _pseudo_mask(feats: Tensor, positives: Tensor, chunk_bytes: int) -> Tensor:
    b, c, n, _ = feats.shape
    p = positives.shape[1]
    cells = n * n
    f = feats.flatten(2)  # [B, C, L]
    ft = f.transpose(1, 2)  # [B, L, C]

    anchor = torch.arange(b, device=feats.device).unsqueeze(1).expand(b, p)
    positives = positives.to(feats.device)
    lo, hi = torch.minimum(anchor, positives), torch.maximum(anchor, positives)
    pairs, inverse = torch.unique((lo * b + hi).flatten(), return_inverse=True)
    first, second = pairs // b, pairs % b

    rows = f.new_empty(len(pairs), cells)  # phi(first, second)
    cols = f.new_empty(len(pairs), cells)  # phi(second, first)
    chunk = max(1, chunk_bytes // (cells * cells * f.element_size()))
    for s in range(0, len(pairs), chunk):
        sim = torch.bmm(ft[first[s : s + chunk]], f[second[s : s + chunk]])  # [K, L, L]
        rows[s : s + chunk] = sim.amax(dim=2)
        cols[s : s + chunk] = sim.amax(dim=1)
        del sim

    anchor_first = (anchor == lo).flatten().unsqueeze(1)
    phi = torch.where(anchor_first, rows[inverse], cols[inverse]) / c  # [B*P, L]
    return phi.view(b, p, n, n).mean(dim=1)


class OELHead(nn.Module):
    """One 1x1 convolution C -> 1: the predicted object extent m' (no activation)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)

    def forward(self, feats: Tensor) -> Tensor:
        return self.conv(feats).squeeze(1)  # [B, N, N]
