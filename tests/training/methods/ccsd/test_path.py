"""CCSD's criticality and decremental path (methods/ccsd/path.py) on tiny, hand-checkable features."""
import math

import pytest
import torch

from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.methods.ccsd.path import (
    FULL_SET_INDEX, check_decremental_path, cosine_similarity_matrix, criticality, decremental_path,
    gradient_criticality, removed_modalities, subset_index_of)

T1, T1CE, T2, FLAIR = range(4)


def idx(*modalities):
    return subset_index_of(tuple(i in modalities for i in range(4)))


def angle_features(*degrees):
    """(1, 4, 2, 1) features: modality m is the 2-d unit vector at degrees[m]."""
    rad = [math.radians(d) for d in degrees]
    return torch.tensor([[math.cos(a), math.sin(a)] for a in rad]).view(1, 4, 2, 1)


# ------------------------------------------------------------------------------------------------- criticality

def test_criticality_identical_pair_least_orthogonal_most():
    e1, e2, e3 = torch.eye(3)
    features = torch.stack([e1, e1, e1 + e2, e3]).view(1, 4, 3, 1)  # T1 == T1ce, FLAIR ⟂ all
    c = criticality(features)
    r = 1 / math.sqrt(2)
    expected = [1 - (1 + r + 0) / 3, 1 - (1 + r + 0) / 3, 1 - (r + r + 0) / 3, 1.0]
    assert c[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert c[0, T1] == c[0, T1CE] == c[0].min()
    assert int(c[0].argmax()) == FLAIR
    assert cosine_similarity_matrix(features)[0, T1, T1CE].item() == pytest.approx(1.0)


def test_criticality_present_mask_and_no_gradient():
    features = angle_features(20, 30, 0, 90).requires_grad_(True)
    present = torch.tensor([[True, False, True, True]])
    c = criticality(features, present)
    assert not c.requires_grad and c.dtype == torch.float32
    assert c[0, T1CE] == float("-inf")
    s = lambda a, b: math.cos(math.radians(a - b))  # noqa: E731
    assert c[0, T1].item() == pytest.approx(1 - (s(20, 0) + s(20, 90)) / 2, abs=1e-6)
    assert c[0, FLAIR].item() == pytest.approx(1 - (s(90, 20) + s(90, 0)) / 2, abs=1e-6)
    lone = criticality(features, torch.tensor([False, False, True, False]))
    assert lone[0].tolist() == [float("-inf"), float("-inf"), 1.0, float("-inf")]


# ------------------------------------------------------------------------------------------------------- paths

def assert_valid_chain(path, start=FULL_SET_INDEX):
    check_decremental_path(path)
    assert path.dtype == torch.long and path.shape[1] == 4
    for row in path.tolist():
        assert row[0] == start
        sets = [SUBSETS[i] for i in row]
        assert [s.cardinality for s in sets] == [4, 3, 2, 1]
        for a, b in zip(sets, sets[1:]):
            assert set(b.modalities) < set(a.modalities) and len(set(a.modalities) - set(b.modalities)) == 1


def test_max_criticality_path_hand_example():
    # T1 20°, T1ce 30°, T2 0°, FLAIR 90°. Full set: c = [.2445, .2164, .3981, .7193] -> remove FLAIR;
    # {T1,T1ce,T2}: c = [.0378, .0746, .0972] -> remove T2; {T1,T1ce}: tie -> remove T1 (lowest index).
    path = decremental_path(angle_features(20, 30, 0, 90))
    assert_valid_chain(path)
    assert path.tolist() == [[FULL_SET_INDEX, idx(T1, T1CE, T2), idx(T1, T1CE), idx(T1CE)]]
    assert removed_modalities(path).tolist() == [[FLAIR, T2, T1]]


def test_min_criticality_removes_in_opposite_order():
    features = angle_features(20, 30, 0, 90)
    # min: remove T1ce (.2164); {T1,T2,FLAIR}: c = [.3592, .5302, .8290] -> remove T1; {T2,FLAIR}: tie -> T2.
    path = decremental_path(features, strategy="min_criticality")
    assert_valid_chain(path)
    assert path.tolist() == [[FULL_SET_INDEX, idx(T1, T2, FLAIR), idx(T2, FLAIR), idx(FLAIR)]]
    max_order = removed_modalities(decremental_path(features))[0].tolist() + [T1CE]  # + the one left
    min_order = removed_modalities(path)[0].tolist() + [FLAIR]
    assert min_order == max_order[::-1]


def test_criticality_recomputed_on_shrinking_set_vs_one_shot():
    features = angle_features(20, 30, 0, 90)
    one_shot = decremental_path(features, recompute=False)  # ranking on the full set: FLAIR, T2, T1, (T1ce)
    assert_valid_chain(one_shot)
    assert removed_modalities(one_shot).tolist() == [[FLAIR, T2, T1]]
    one_shot_min = decremental_path(features, strategy="min_criticality", recompute=False)
    assert removed_modalities(one_shot_min).tolist() == [[T1CE, T1, T2]]  # full-set ranking ascending
    # T1 0°, T1ce 10°, T2 40°, FLAIR 90°: full set c = [.4164, .3252, .2417, .7279] -> FLAIR first either way.
    # Recomputed on {T1,T1ce,T2}: c = [1-(c10+c40)/2, 1-(c10+c30)/2, 1-(c40+c30)/2] = [.1246, .0746, .1840] -> T2;
    # the one-shot ranking removes T1 (second-highest on the full set) instead.
    features = angle_features(0, 10, 40, 90)
    assert removed_modalities(decremental_path(features)).tolist() == [[FLAIR, T2, T1]]
    assert removed_modalities(decremental_path(features, recompute=False)).tolist() == [[FLAIR, T1, T1CE]]


def test_ties_are_broken_towards_the_lowest_index():
    features = torch.ones(2, 4, 3, 2)  # all identical: every step is a tie
    for strategy in ("max_criticality", "min_criticality"):
        path = decremental_path(features, strategy=strategy)
        assert path.tolist() == [[FULL_SET_INDEX, idx(T1CE, T2, FLAIR), idx(T2, FLAIR), idx(FLAIR)]] * 2


def test_random_path_reproducible_and_valid():
    features = torch.randn(32, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    a = decremental_path(features, strategy="random", generator=torch.Generator().manual_seed(7))
    b = decremental_path(features, strategy="random", generator=torch.Generator().manual_seed(7))
    c = decremental_path(features, strategy="random", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(r) for r in a.tolist()}) > 1
    assert_valid_chain(a)
    assert_valid_chain(c)


def test_gradient_path_follows_norms():
    norms = torch.tensor([[0.1, 5.0, 3.0, 0.2], [4.0, 1.0, 2.0, 3.0]])
    path = decremental_path(None, strategy="gradient", gradient_norms=norms)
    assert_valid_chain(path)
    assert removed_modalities(path).tolist() == [[T1CE, T2, FLAIR], [T1, FLAIR, T2]]
    assert path[0].tolist() == [FULL_SET_INDEX, idx(T1, T2, FLAIR), idx(T1, FLAIR), idx(T1)]
    with pytest.raises(ValueError):
        decremental_path(torch.ones(2, 4, 1, 1), strategy="gradient")


def test_gradient_criticality_is_the_gradient_norm():
    f = torch.ones(2, 4, 3, 2, requires_grad=True)
    w = torch.tensor([1.0, -2.0, 0.5, 0.0])
    loss = (f * w.view(1, 4, 1, 1)).sum()
    norms = gradient_criticality(loss, f)
    assert norms.shape == (2, 4) and not norms.requires_grad
    assert norms[0].tolist() == pytest.approx((w.abs() * math.sqrt(6)).tolist())
    parts = [torch.ones(2, 3, requires_grad=True) for _ in range(4)]
    loss = sum(wm * p.sum() for wm, p in zip(w.tolist(), parts))
    assert gradient_criticality(loss, parts)[1].tolist() == pytest.approx((w.abs() * math.sqrt(3)).tolist())


def test_path_from_a_partial_start_set_repeats_the_last_subset():
    features = angle_features(20, 30, 0, 90)
    present = torch.tensor([[False, True, True, True]])
    path = decremental_path(features, present_full=present)
    check_decremental_path(path)
    assert path[0, 0].item() == idx(T1CE, T2, FLAIR)
    assert SUBSETS[path[0, 2].item()].cardinality == 1 and path[0, 3] == path[0, 2]
    assert removed_modalities(path)[0, 2].item() == -1
    with pytest.raises(ValueError):
        decremental_path(features, strategy="unknown")
    with pytest.raises(ValueError):
        check_decremental_path(torch.tensor([[14, 4, 1, 0]]))  # T1+T1ce -> T1ce -> T1 is no chain
