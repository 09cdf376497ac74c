"""`data.augment: device` draws the CPU preset's augmentations (run here on the CPU)."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from pipeline.config.data import TransformConfig
from pipeline.data.device_augment import DeviceAugment, DeviceImages, DeviceLoader
from pipeline.data.manifest import Record
from pipeline.data.transforms import MEAN, STD, ClassificationPresetTrain

CFG = TransformConfig(resize=72, crop=64, rotation=15, hflip=True)
N = 600


def marked_image(h=72, w=90):
    """Grey, with a bright 3x3 marker off-centre: where it lands shows crop, flip and rotation."""
    image = torch.full((3, h, w), 128, dtype=torch.uint8)
    image[:, 20:23, 60:63] = 255
    return image


def features(batch: torch.Tensor) -> dict[str, np.ndarray]:
    """Per output image: the fill fraction (rotated-out corners), the marker's centroid, the mean."""
    raw = batch * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)  # back to [0, 1]
    grey = raw.mean(1)
    marker = grey > 0.9
    ys, xs = torch.meshgrid(torch.arange(grey.shape[1]), torch.arange(grey.shape[2]), indexing="ij")
    count = marker.sum((1, 2)).clamp_min(1)
    seen = marker.any(2).any(1)
    return {
        "fill": (grey < 0.05).float().mean((1, 2)).numpy(),
        "marker_x": ((marker * xs).sum((1, 2)) / count)[seen].numpy(),
        "marker_y": ((marker * ys).sum((1, 2)) / count)[seen].numpy(),
        "marker_seen": seen.float().numpy(),
    }


def cpu_preset(image):
    torch.manual_seed(0)
    preset = ClassificationPresetTrain(CFG)
    return torch.stack([preset(image) for _ in range(N)])


def device_preset(image):
    torch.manual_seed(1)
    resized = ClassificationPresetTrain(CFG).transforms[0](image)  # the deterministic resize, done once
    augment = DeviceAugment(CFG)
    h, w = resized.shape[1:]
    canvas = torch.zeros(N, 3, h + 5, w + 7, dtype=torch.uint8)  # padded wider than the image, as in a batch
    canvas[:, :, :h, :w] = resized
    out, _ = augment(canvas, torch.tensor([[h, w]] * N))
    return out


@pytest.fixture(scope="module")
def both():
    image = marked_image()
    return features(cpu_preset(image)), features(device_preset(image))


@pytest.mark.parametrize("stat", ["fill", "marker_x", "marker_y", "marker_seen"])
def test_device_augment_draws_the_cpu_presets_distribution(both, stat):
    cpu, dev = both
    # two samples of 600 from one distribution: a KS test at 0.1% (fixed seeds, so not flaky)
    assert stats.ks_2samp(cpu[stat], dev[stat]).pvalue > 1e-3, (stat, cpu[stat].mean(), dev[stat].mean())
    # and the means agree to a few standard errors
    se = np.sqrt(cpu[stat].var() / len(cpu[stat]) + dev[stat].var() / len(dev[stat]))
    assert abs(cpu[stat].mean() - dev[stat].mean()) < 4 * se + 1e-6


def test_a_different_distribution_is_told_apart(both):
    """The same statistics catch a wrong augmentation: no flip moves the marker's x distribution."""
    cpu, _ = both
    torch.manual_seed(1)
    image = marked_image()
    resized = ClassificationPresetTrain(CFG).transforms[0](image)
    no_flip = DeviceAugment(TransformConfig(resize=72, crop=64, rotation=15, hflip=False))
    out, _ = no_flip(resized.expand(N, -1, -1, -1).contiguous(), torch.tensor([list(resized.shape[1:])] * N))
    assert stats.ks_2samp(cpu["marker_x"], features(out)["marker_x"]).pvalue < 1e-6
    wider = DeviceAugment(TransformConfig(resize=72, crop=64, rotation=30, hflip=True))  # twice the angle range
    out, _ = wider(resized.expand(N, -1, -1, -1).contiguous(), torch.tensor([list(resized.shape[1:])] * N))
    assert stats.ks_2samp(cpu["fill"], features(out)["fill"]).pvalue < 1e-6


def test_without_randomness_it_is_an_exact_crop_and_normalisation():
    image = torch.randint(0, 256, (2, 3, 70, 80), dtype=torch.uint8)
    augment = DeviceAugment(TransformConfig(resize=70, crop=70, rotation=0, hflip=False))
    out, _ = augment(image, torch.tensor([[70, 80], [70, 80]]))
    # crop 70 of width 80: the left offset is random, the rows are exact; find it and compare
    expected = (image.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    for i in range(2):
        errors = [(out[i] - expected[i, :, :, left : left + 70]).abs().max() for left in range(11)]
        assert min(errors) < 1e-5


def test_device_loader_yields_the_samplers_batches_with_moved_masks(tmp_path):
    rows = []
    for i in range(4):
        arr = np.full((40, 50, 3), 100 + 30 * i, dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        mask = np.zeros((40, 50), dtype=np.uint8)
        mask[10:30, 10:40] = 255
        Image.fromarray(mask).save(tmp_path / f"{i}.mask.png")
        rows.append(Record(tmp_path / f"{i}.png", i % 2, "train", mask=tmp_path / f"{i}.mask.png"))
    data = DeviceImages(rows, resize=36, device=torch.device("cpu"), masks=True)
    assert data.images.shape == (4, 3, 36, 45) and data.sizes.tolist() == [[36, 45]] * 4
    loader = DeviceLoader(data, [[3, 1], [0, 2]], DeviceAugment(TransformConfig(resize=36, crop=32, rotation=0)))
    batches = list(loader)
    assert len(batches) == len(loader) == 2
    images, masks, labels = batches[0]
    assert images.shape == (2, 3, 32, 32) and masks.shape == (2, 32, 32) and labels.tolist() == [1, 1]
    grey = images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    assert torch.allclose(grey[0], torch.full_like(grey[0], 190 / 255), atol=1e-6)  # image 3, uniform
    assert 0.2 < masks.float().mean() < 0.6
