"""The localisation scores and their reference predictors on hand-made masks."""

import math

import pytest
import torch

from pipeline.evaluate.localisation import centre_disc, iou, pointing, pointing_chance, pooled, reference_maps, unit


def half_mask(size=16):
    """The left half of the image is the object."""
    m = torch.zeros(1, size, size, dtype=torch.bool)
    m[:, :, : size // 2] = True
    return m


def test_all_ones_on_a_half_filled_mask_scores_one_half():
    masks = half_mask()
    refs = reference_maps(masks, 4, area=0.5, seed=0)
    assert iou(refs["all-ones"], masks, 0.5).item() == pytest.approx(0.5)


def test_the_ceiling_of_an_exactly_pooled_mask_is_one():
    masks = half_mask()
    refs = reference_maps(masks, 4, area=0.5, seed=0)
    assert torch.equal(refs["ceiling"], pooled(masks, 4))
    assert iou(refs["ceiling"], masks, 0.5).item() == pytest.approx(1.0)


def test_a_map_on_the_wrong_half_scores_zero_and_the_right_half_one():
    masks = half_mask()
    right = torch.zeros(1, 4, 4)
    right[:, :, 2:] = 1
    assert iou(right, masks, 0.5).item() == 0.0
    assert iou(1 - right, masks, 0.5).item() == pytest.approx(1.0)


def test_centre_prior_has_the_asked_area_and_is_centred():
    disc = centre_disc(64, 0.2)
    assert disc.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert disc[32, 32] and not disc[0, 0] and torch.equal(disc, disc.flip(0)) and torch.equal(disc, disc.flip(1))
    # a centred disc mask is found exactly by the centre prior of its own area
    masks = centre_disc(64, 0.2)[None]
    prior = reference_maps(masks, 8, area=0.2, seed=0)["centre prior"]
    assert iou(prior, masks, 0.5).item() > 0.9


def test_random_map_is_seeded_and_scores_near_chance():
    masks = half_mask(32).expand(64, 32, 32)
    a, b = reference_maps(masks, 8, 0.5, seed=3)["random"], reference_maps(masks, 8, 0.5, seed=3)["random"]
    assert torch.equal(a, b)
    assert 0.2 < iou(a, masks, 0.5).mean().item() < 0.45  # about half of each half is "on"


def test_constant_maps_count_as_all_on():
    assert torch.equal(unit(torch.full((1, 3, 3), 7.0)), torch.ones(1, 3, 3))


def test_pointing_and_its_chance_rate():
    masks = half_mask()
    left, right = torch.zeros(1, 4, 4), torch.zeros(1, 4, 4)
    left[0, 1, 0], right[0, 1, 3] = 1, 1
    assert pointing(left, masks).item() and not pointing(right, masks).item()
    assert pointing_chance(masks, 4).item() == 0.5
    corner = torch.zeros(1, 16, 16, dtype=torch.bool)
    corner[0, 0, 0] = True  # one pixel: one of 16 cells touches the object
    assert math.isclose(pointing_chance(corner, 4).item(), 1 / 16)
