"""GroupBatchSampler invariants (docs/method.md, "Batches")."""

from collections import Counter

import pytest
import torch

from pipeline.lio import GroupBatchSampler, group_positives
from pipeline.lio.sampler import batch_positives, code_positives


def labels_of(counts):
    return [c for c, n in enumerate(counts) for _ in range(n)]


def test_group_positives_layout():
    pos = group_positives(2, 3)
    assert pos.shape == (8, 3)
    for i in range(8):
        group = set(range(i // 4 * 4, i // 4 * 4 + 4))
        assert set(pos[i].tolist()) == group - {i}


@pytest.mark.parametrize("P", [1, 3, 5])
def test_every_group_is_one_class_and_every_image_appears(P):
    labels = labels_of([12, 9, 17, 8])
    sampler = GroupBatchSampler(labels, P, groups_per_batch=2, seed=1)
    seen = Counter()
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for b in batches:
        assert len(b) % (P + 1) == 0
        for g in range(0, len(b), P + 1):
            group = b[g : g + P + 1]
            assert len({labels[i] for i in group}) == 1
            assert len(set(group)) == P + 1  # no image twice in a group
        seen.update(b)
    assert set(seen) == set(range(len(labels)))
    assert max(seen.values()) <= 2  # only the top-up of a class's last group repeats


def test_exactly_once_when_classes_divide_into_groups():
    labels = labels_of([8, 12, 4])
    seen = Counter(i for b in GroupBatchSampler(labels, 3, 3, seed=0) for i in b)
    assert all(v == 1 for v in seen.values()) and len(seen) == 24


def test_deterministic_per_seed_and_epoch():
    labels = labels_of([10, 10, 10])
    a, b = GroupBatchSampler(labels, 3, 2, seed=5), GroupBatchSampler(labels, 3, 2, seed=5)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(GroupBatchSampler(labels, 3, 2, seed=6)) != list(GroupBatchSampler(labels, 3, 2, seed=5))


def test_ranks_get_disjoint_groups_and_the_same_number_of_steps():
    labels = labels_of([8, 8, 8, 8])  # 8 groups of 4
    ranks = [GroupBatchSampler(labels, 3, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    got = [[i for b in s for i in b] for s in ranks]
    assert len(list(ranks[0])) == len(list(ranks[1])) == len(ranks[0])
    assert not set(got[0]) & set(got[1])
    assert set(got[0]) | set(got[1]) == set(range(32))


def test_small_class_sampled_with_replacement_and_named():
    labels = labels_of([2, 10])
    with pytest.warns(UserWarning, match="tiny_class"):
        sampler = GroupBatchSampler(labels, 3, 1, class_names=["tiny_class", "big"])
    groups = [b for b in sampler if labels[b[0]] == 0]
    assert len(groups) == 1 and len(groups[0]) == 4 and set(groups[0]) <= {0, 1}


def test_bad_arguments():
    with pytest.raises(ValueError, match="P must be"):
        GroupBatchSampler([0, 0], 0, 1)
    with pytest.raises(ValueError, match="rank"):
        GroupBatchSampler([0, 0], 1, 1, rank=2, world_size=2)


# ---------------------------------------- the released code's grouping (issue "Fidelity, second pass")
def released_code_rows(N, P):
    """The batch the released code's training step feeds `get_mask`, as ids of our group layout
    (anchor i is id i*(P+1), its k-th positive id i*(P+1)+1+k), following its files step by step:
    collate_fn1 stacks positives anchor-major; train_util_index.py reorders them with
    view(N, P).transpose(0, 1) and puts the N anchors in front; get_mask views the result as
    [N*(P+1) / (P+1), P+1] consecutive rows and compares each row with the others of its run."""
    anchors = torch.arange(N) * (P + 1)
    positives = torch.stack([anchors + 1 + k for k in range(P)], dim=1).flatten()  # collate_fn1: anchor-major
    positives = positives.view(N, P).transpose(0, 1).contiguous().view(-1)  # train_util_index.py
    rows = torch.cat([anchors, positives])  # all_img_features
    runs = rows.view(-1, P + 1)  # get_mask: all_objects.view(N_1, num_positive + 1, S, C)
    return {int(r): {int(o) for o in run if o != r} for run in runs for r in run}


@pytest.mark.parametrize("N, P", [(16, 3), (8, 3), (6, 1), (10, 4)])
def test_code_positives_reproduce_the_released_grouping(N, P):
    compared = released_code_rows(N, P)
    pos = code_positives(N, P)
    assert {i: set(pos[i].tolist()) for i in range(N * (P + 1))} == compared
    # with N >= P+1 anchors, no image is compared with its own class's images (its group):
    # the code's M(a0) is built from the images a1..aP, of other anchors
    assert all(o // (P + 1) != i // (P + 1) for i, others in compared.items() for o in others)


def test_released_grouping_compares_anchors_with_anchors():
    # the concrete reading of the issue for the code's defaults (16 anchors a batch, 3 positives):
    # the first run is anchors a0..a3, the fifth run the first positives of anchors 0..3
    compared = released_code_rows(16, 3)
    assert compared[0] == {4, 8, 12}  # a0 with a1, a2, a3
    assert compared[1] == {5, 9, 13}  # p0(a0) with p0(a1), p0(a2), p0(a3)


def test_batch_positives_choose_the_layout():
    assert torch.equal(batch_positives(3, 2, "same_class"), group_positives(3, 2))
    assert torch.equal(batch_positives(3, 2, "batch"), code_positives(3, 2))
    with pytest.raises(ValueError, match="same_class"):
        batch_positives(3, 2, "random")
