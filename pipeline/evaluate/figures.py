"""reports/masks.png: one row per test image, its extent maps, the true mask, and the
IoU of each map written on it, with column titles, so the figure reads on its own."""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.transforms.v2.functional import to_pil_image
from torchvision.utils import make_grid

from pipeline.data.transforms import MEAN, STD
from pipeline.evaluate.localisation import upsample

TILE = 128  # pixels per tile, whatever the network's input size
HEADER = 18


def heat(m: Tensor) -> Tensor:
    """[B, H, W] in [0, 1] -> [B, 3, H, W], dark blue (0) to yellow (1)."""
    return torch.stack([m, m.sqrt() * 0.9, 0.5 * (1 - m)], dim=1)


def extent_figure(
    path, images: Tensor, columns: dict[str, Tensor], masks: Tensor | None, ious: dict[str, Tensor]
) -> None:
    """images [B, 3, H, W] (normalised); columns: title -> maps [B, N, N]; masks [B, H, W]
    or None (a dataset without masks); ious: title -> [B]."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    tiles = [(images * std + mean).clamp(0, 1)] + [heat(upsample(m, TILE)) for m in columns.values()]
    tiles = [torch.nn.functional.interpolate(t, size=(TILE, TILE), mode="nearest") for t in tiles]
    titles = ["image", *columns]
    if masks is not None:
        tiles.append(torch.nn.functional.interpolate(masks[:, None].float(), size=(TILE, TILE)).expand(-1, 3, -1, -1))
        titles.append("true mask")
    grid = make_grid(torch.stack(tiles, dim=1).flatten(0, 1), nrow=len(tiles), padding=2, pad_value=1.0)
    body = to_pil_image(grid)
    canvas = Image.new("RGB", (body.width, body.height + HEADER), "white")
    canvas.paste(body, (0, HEADER))
    draw = ImageDraw.Draw(canvas)
    step = TILE + 2
    for col, title in enumerate(titles):
        draw.text((2 + col * step + 3, 3), title, fill="black")
        if title in ious:
            for row, value in enumerate(ious[title].tolist()):
                x, y = 2 + col * step + 3, HEADER + 2 + row * step + TILE - 14
                draw.rectangle((x - 2, y - 1, x + 62, y + 11), fill="black")
                draw.text((x, y), f"IoU {value:.2f}", fill="white")
    canvas.save(str(path), format="PNG")
