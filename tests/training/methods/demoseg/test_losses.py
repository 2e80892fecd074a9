"""DeMoSeg's mutual-to-self alignment on hand-checkable inputs."""
import math

import torch

from nnunet_missingmod.training.methods.demoseg.losses import channel_kl, mutual_self_alignment

T1, CE, T2, FL = range(4)


def test_channel_kl_is_the_official_mean_reduced_kl_of_the_target_to_the_student():
    student = torch.zeros(1, 2, 1, 1, 1)                                   # softmax (1/2, 1/2)
    target = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)        # softmax (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    # torch's KLDivLoss(reduction='mean') divides by every element, the two channels included
    torch.testing.assert_close(channel_kl(student, target), torch.tensor([kl / 2]))
    assert channel_kl(target, target).item() == 0.0


def _decoupled(generator_seed=0):
    return torch.randn(2, 4, 8, 2, 2, 2, generator=torch.Generator().manual_seed(generator_seed))


def test_alignment_pairs_each_present_sequences_mutual_feature_with_the_others_self_feature():
    f = _decoupled()
    # sample 0: T1 + T2 (quarter T1->T2 is 0^2 = 2, T2->T1 is 2); sample 1: T1ce alone (no pair: 0)
    present = torch.tensor([[True, False, True, False], [False, True, False, False]])
    q = lambda s, m, k: f[s:s + 1, m, 2 * k:2 * k + 2]  # noqa: E731  (sample, sequence, quarter)
    expected = (channel_kl(q(0, T1, 2), q(0, T2, 0)) + channel_kl(q(0, T2, 2), q(0, T1, 0))) / 2  # mean of 2 samples
    torch.testing.assert_close(mutual_self_alignment(f, present), expected[0])
    # T1ce + FLAIR are paired through quarter 1 ^ 3 = 2 as well; T1 + T1ce through quarter 1
    present = torch.tensor([[True, True, False, False], [False, True, False, True]])
    expected = (channel_kl(q(0, T1, 1), q(0, CE, 0)) + channel_kl(q(0, CE, 1), q(0, T1, 0))
                + channel_kl(q(1, CE, 2), q(1, FL, 0)) + channel_kl(q(1, FL, 2), q(1, CE, 0))) / 2
    torch.testing.assert_close(mutual_self_alignment(f, present), expected[0])


def test_alignment_is_zero_when_mutual_features_equal_the_self_features_they_stand_for():
    f = _decoupled()
    for a in range(4):  # every quarter k of a := the self quarter of a ^ k
        for k in range(1, 4):
            f[:, a, 2 * k:2 * k + 2] = f[:, a ^ k, :2]
    assert mutual_self_alignment(f, torch.ones(2, 4, dtype=torch.bool)).item() < 1e-6
    f[:, T2, 2] += 1.0  # T2's stand-in for FLAIR moves away (one channel: softmax ignores a shift of all)
    assert mutual_self_alignment(f, torch.ones(2, 4, dtype=torch.bool)).item() > 1e-3
    assert mutual_self_alignment(f, torch.tensor([[True, True, True, False]] * 2)).item() < 1e-6
