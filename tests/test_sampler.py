"""GroupBatchSampler invariants (docs/method.md, "Batches")."""

from collections import Counter

import pytest

from pipeline.lio import GroupBatchSampler, group_positives


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
