"""Spatial context learning (docs/method.md, SCL): polar targets, the SCL head and its loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-8


def polar_targets(ref: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Distance and angle of every cell from the reference cell, both in [0, 1].

    ref: long [B, 2] as (row, col); rows are the vertical axis, columns the horizontal.
    d = sqrt((r0 - r)^2 + (c0 - c)^2) / (sqrt(2) N);  a = (atan2(r0 - r, c0 - c) + pi) / 2pi.
    """
    grid = torch.arange(n, device=ref.device, dtype=torch.float32)
    dr = ref[:, 0].float().view(-1, 1, 1) - grid.view(1, n, 1)  # [B, N, 1]
    dc = ref[:, 1].float().view(-1, 1, 1) - grid.view(1, 1, n)  # [B, 1, N]
    dr, dc = torch.broadcast_tensors(dr, dc)
    dist = torch.sqrt(dr**2 + dc**2) / (math.sqrt(2) * n)
    angle = (torch.atan2(dr, dc) + math.pi) / (2 * math.pi)
    return dist.contiguous(), angle.contiguous()


def scl_loss(pred_dist: Tensor, pred_angle: Tensor, dist: Tensor, angle: Tensor, weight: Tensor) -> Tensor:
    """Mean over the batch of L_dis + L_ang, each a weighted root-mean-square (docs/method.md, SCL).

    All inputs [B, N, N]. The weights are a target-side quantity and get no gradient.
    The angle gap is wrapped into [0, 1) and only its weighted spread is penalised, so the
    loss ignores the absolute reference direction (rotation invariance).
    """
    w = weight.detach().float().flatten(1)
    wsum = w.sum(dim=1) + EPS
    d_err = (pred_dist.float() - dist.float()).flatten(1)
    l_dis = torch.sqrt((w * d_err**2).sum(dim=1) / wsum + EPS)
    gap = (pred_angle.float() - angle.float()).flatten(1)
    gap = torch.where(gap < 0, gap + 1, gap)
    mean_gap = (w * gap).sum(dim=1, keepdim=True) / wsum.unsqueeze(1)
    l_ang = torch.sqrt((w * (gap - mean_gap) ** 2).sum(dim=1) / wsum + EPS)
    return (l_dis + l_ang).mean()


def reference_cells(extent: Tensor) -> Tensor:
    """Argmax cell (row, col) of each predicted extent [B, N, N], without gradient."""
    n = extent.shape[-1]
    flat = extent.detach().flatten(1).argmax(dim=1)
    return torch.stack([flat // n, flat % n], dim=1)


class SCLHead(nn.Module):
    """1x1 conv C -> C1 + ReLU gives h; [h(cell), h(ref)] -> FC 2*C1 -> 2 + ReLU gives (d', a')."""

    def __init__(self, in_channels: int, hidden: int = 512):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=1)
        self.fc = nn.Linear(2 * hidden, 2)

    def forward(self, feats: Tensor, ref: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.proj(feats)).flatten(2)  # [B, C1, L]
        b, c1, cells = h.shape
        n = feats.shape[-1]
        index = (ref[:, 0] * n + ref[:, 1]).view(b, 1, 1).expand(b, c1, 1)
        h_ref = h.gather(2, index).expand(b, c1, cells)
        out = F.relu(self.fc(torch.cat([h, h_ref], dim=1).transpose(1, 2)))  # [B, L, 2]
        return out[..., 0].reshape(b, n, n), out[..., 1].reshape(b, n, n)
