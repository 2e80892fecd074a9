"""MST-KDNet distillation losses (methods/mstkd/losses.py): hand-computed values, zero on identical inputs, gradient
routing, float32 under fp16 inputs and autocast."""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_missingmod.training.methods.mstkd.losses import (
    OFFICIAL_WEIGHTS, SOURCE_LABEL, TARGET_LABEL, ConsistencyLoss, ContentLoss, EVDLoss, GramStyleLoss,
    LogitStandardisedKD, MultiScaleTransformerLoss, consistency_weight, discriminator_loss,
    generator_adversarial_loss)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _attention(n_layers=4, shape=(2, 3, 5, 5), seed=0):
    g = _gen(seed)
    return [torch.softmax(torch.randn(*shape, generator=g), dim=-1) for _ in range(n_layers)]


def _official_evd(teacher, student):
    """The official models/evd.py:EVD written out (stack over layers, max/min/mean, 3 x L mean-MSE terms)."""
    def maps(ws):
        st = torch.stack(ws, 0)
        return [[w * m for w in ws] for m in (st.max(0).values, st.min(0).values, st.mean(0))]
    total = 0.0
    for lt, ls in zip(maps(teacher), maps(student)):
        for t, s in zip(lt, ls):
            total = total + F.mse_loss(t, s)
    return total


# ------------------------------------------------------------------------------------------------------ constants
def test_official_weights_and_labels():
    assert OFFICIAL_WEIGHTS == dict(seg_teacher=0.4, seg_student=0.6, evd=1e8, mst=0.2, slkd=1.0,
                                    slkd_temperature=7.0, consistency_max=10.0, consistency_rampup=0.2,
                                    content=0.2, gram=1.0, adversarial=2e-4)
    assert (SOURCE_LABEL, TARGET_LABEL) == (0.0, 1.0)


def test_evd_hand_example_2x2():
    # L = 2 layers of 2x2 maps (B = heads = 1).
    t1 = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    t2 = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    s = torch.full((2, 2), 0.5)
    # teacher: max = [[1,.5],[1,.5]], min = [[.5,0],[.5,0]], mean = [[.75,.25],[.75,.25]]
    # student: max = min = mean = 0.5 everywhere -> every EV^S = 0.25
    # max:  t1*max = [[.5,.25],[1,0]]     diffs .25,0,.75,-.25   -> (.0625+0+.5625+.0625)/4 = .171875
    #       t2*max = [[1,0],[.5,.25]]     same multiset          -> .171875
    # min:  t1*min = [[.25,0],[.5,0]]     diffs 0,-.25,.25,-.25  -> .1875/4 = .046875
    #       t2*min = [[.5,0],[.25,0]]                            -> .046875
    # mean: t1*mean = [[.375,.125],[.75,0]]  diffs .125,-.125,.5,-.25 -> .34375/4 = .0859375
    #       t2*mean = [[.75,0],[.375,.125]]                             -> .0859375
    expected = 2 * (0.171875 + 0.046875 + 0.0859375)  # = 0.609375
    loss = EVDLoss()([t1.view(1, 1, 2, 2), t2.view(1, 1, 2, 2)], [s.view(1, 1, 2, 2), s.view(1, 1, 2, 2)])
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-7)


def test_evd_matches_official_12_terms_and_zero_on_identical():
    teacher, student = _attention(seed=1), _attention(seed=2)
    loss = EVDLoss()(teacher, student)
    assert loss.item() == pytest.approx(_official_evd(teacher, student).item(), rel=1e-6, abs=0)
    assert loss.item() > 0
    assert EVDLoss()(teacher, [a.clone() for a in teacher]).item() == 0.0


def test_evd_statistics_are_over_layers_not_heads():
    # Only layer 0 of the student differs in one head: a per-layer statistic would still be exact per element,
    # but the layer-axis max changes, so every layer's EV terms see it (12 terms in play, not 3).
    teacher = _attention(seed=3)
    student = [a.clone() for a in teacher]
    student[0][:, 0] = student[0][:, 0].flip(-1)
    loss = EVDLoss()(teacher, student)
    assert loss.item() == pytest.approx(_official_evd(teacher, student).item(), rel=1e-6, abs=0)
    only_layer_terms = sum(F.mse_loss(t * t, s * s) for t, s in zip(teacher[:1], student[:1]))
    assert loss.item() != pytest.approx(only_layer_terms.item(), rel=1e-3, abs=0)


def test_evd_fp16_inputs_give_nonzero_float32():
    g = _gen(4)
    teacher = [torch.softmax(torch.randn(1, 2, 32, 32, generator=g), -1) for _ in range(4)]
    student = [(a + 1e-3 * torch.randn(a.shape, generator=g)).clamp_min(0) for a in teacher]
    t16, s16 = [a.half() for a in teacher], [a.half() for a in student]
    # the same arithmetic kept in fp16 underflows (products ~3e-2, differences ~3e-5, squares ~1e-9 < 6e-8)
    naive = ((t16[0] * t16[0]) - (s16[0] * s16[0])).square().mean()
    assert naive.dtype == torch.float16 and naive.item() == 0.0
    loss = EVDLoss()(t16, s16)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss) and loss.item() > 0
    ref = _official_evd([a.float() for a in t16], [a.float() for a in s16])
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=0)


def test_evd_rejects_mismatched_inputs():
    a = _attention(n_layers=2)
    with pytest.raises(ValueError):
        EVDLoss()(a, a[:1])
    with pytest.raises(ValueError):
        EVDLoss()(a, [x[:, :1] for x in a])


# ------------------------------------------------------------------------------------------------------ MST / content
def test_mst_hand_example_and_weights():
    t = [torch.tensor([1.0, 2.0]).view(1, 1, 2), torch.zeros(1, 2, 2)]
    s = [torch.tensor([1.0, 4.0]).view(1, 1, 2), torch.ones(1, 2, 2)]
    # (0^2 + 2^2)/2 = 2 ; (1*4)/4 = 1
    assert MultiScaleTransformerLoss()(t, s).item() == pytest.approx(3.0)
    assert MultiScaleTransformerLoss(weight_factors=[1.0, 0.5])(t, s).item() == pytest.approx(2.5)
    assert MultiScaleTransformerLoss()(t, [x.clone() for x in t]).item() == 0.0
    with pytest.raises(ValueError):
        MultiScaleTransformerLoss(weight_factors=[1.0])(t, s)


def test_content_hand_example():
    t = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 4)
    s = torch.tensor([1.0, 1.0, 2.0, 1.0]).view(1, 1, 4)
    assert ContentLoss()(t, s).item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    assert ContentLoss()(t, t.clone()).item() == 0.0
    assert ContentLoss()(t.half(), s.half()).dtype == torch.float32


# ------------------------------------------------------------------------------------------------------ consistency
def test_consistency_weight_rampup():
    assert consistency_weight(0.0) == pytest.approx(10 * math.exp(-5))         # 0.0674
    assert consistency_weight(0.1) == pytest.approx(10 * math.exp(-5 * 0.25))  # 2.865
    assert consistency_weight(0.2) == pytest.approx(10.0)
    assert consistency_weight(1.0) == pytest.approx(10.0)
    assert consistency_weight(0.5, max_weight=3.0, rampup_fraction=0.0) == 3.0
    # official get_current_consistency_weight(e) = 10 * exp(-5 (1 - min(e, 20)/20)^2) at epoch e of 100
    for e in range(0, 101, 5):
        official = 10 * math.exp(-5 * (1 - min(e, 20) / 20) ** 2)
        assert consistency_weight(e / 100) == pytest.approx(official)


def test_consistency_regions_hand_example():
    # 1 sample, 2 region channels, 2 voxels. sigmoid(ln 3) = 0.75, sigmoid(-ln 3) = 0.25, sigmoid(0) = 0.5
    l3 = math.log(3)
    t = torch.tensor([[[0.0, 1.0], [l3, 0.0]]])
    s = torch.tensor([[[0.0, 1.0], [-l3, 0.0]]])
    # channel 0: identical -> 0; channel 1: diffs (0.5, 0) -> mean 0.125; summed over channels -> 0.125
    assert ConsistencyLoss(regions=True)(t, s).item() == pytest.approx(0.125, abs=1e-7)
    assert ConsistencyLoss(regions=True)(t, t.clone()).item() == 0.0


def test_consistency_softmax_hand_example():
    # 2 classes, 1 voxel: softmax([0, ln 3]) = (.25, .75), softmax([0, 0]) = (.5, .5)
    t = torch.tensor([0.0, math.log(3)]).view(1, 2, 1)
    s = torch.zeros(1, 2, 1)
    assert ConsistencyLoss(regions=False)(t, s).item() == pytest.approx(0.25 ** 2 + 0.25 ** 2, abs=1e-7)
    # sigmoid form of the same logits: (.5-.5)^2 + (.75-.5)^2
    assert ConsistencyLoss(regions=True)(t, s).item() == pytest.approx(0.0625, abs=1e-7)


def test_consistency_is_not_the_official_bg_dice_term():
    # official 4th term = teacher BG Dice vs ground truth, independent of the student; ours is 0 for equal outputs
    t = torch.randn(2, 4, 3, 3, generator=_gen(5))
    assert ConsistencyLoss(regions=False)(t, t.clone()).item() == 0.0


# ------------------------------------------------------------------------------------------------------ SLKD
def test_slkd_regions_hand_example():
    # 1 sample, 1 region, 2 voxels. Teacher [0, 2]: mean 1, unbiased std sqrt(2) -> z = (-1/sqrt2, 1/sqrt2);
    # student [2, 0] -> z = (1/sqrt2, -1/sqrt2). With c = 1/(tau sqrt2): p_T = sigmoid(-c), p_S = sigmoid(c) =
    # 1 - p_T at voxel 0 (mirrored at voxel 1), so KL = (1 - 2 p_T) * log((1 - p_T)/p_T) = tanh(c/2) * c.
    t = torch.tensor([0.0, 2.0]).view(1, 1, 2)
    s = torch.tensor([2.0, 0.0]).view(1, 1, 2)
    for tau in (1.0, 7.0):
        c = 1 / (tau * math.sqrt(2))
        p = 1 / (1 + math.exp(c))  # sigmoid(-c)
        kl = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
        assert kl == pytest.approx(c * math.tanh(c / 2))
        loss = LogitStandardisedKD(temperature=tau, regions=True)(t, s)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(tau * tau * kl, rel=1e-5, abs=0)
        # symmetric case: swapping teacher and student gives the same value
        assert LogitStandardisedKD(temperature=tau, regions=True)(s, t).item() == pytest.approx(loss.item())


def test_slkd_regions_zscore_invariances_and_zero():
    g = _gen(6)
    t, s = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    kd = LogitStandardisedKD(regions=True)
    base = kd(t, s).item()
    assert base > 0
    shift_t, shift_s = torch.randn(2, 3, 1, 1, generator=g) * 5, torch.randn(2, 3, 1, 1, generator=g) * 5
    assert kd(t + shift_t, s + shift_s).item() == pytest.approx(base, rel=1e-4, abs=0)
    scale = torch.rand(2, 3, 1, 1, generator=g) + 0.5
    assert kd(t * scale, s).item() == pytest.approx(base, rel=1e-4, abs=0)
    # a per-channel affine change of the student alone is invisible: standardised maps agree up to float32
    # rounding of z (~1e-7), so the loss is ~0 next to base (~1e-1)
    assert kd(t, t * 3.0 + 2.0).item() < 1e-5 * base
    assert kd(t, t.clone()).item() == 0.0


def test_slkd_regions_teacher_is_the_target():
    g = _gen(7)
    # skewed teacher maps and tau = 1 so that the Bernoulli KL is clearly asymmetric (near p = .5 it is symmetric
    # to third order, so at tau = 7 the two directions agree to ~1e-4)
    t = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 10.0], [5.0, 0.0, 1.0, 0.0, 0.0, 0.0]]])
    s = torch.randn(1, 2, 6, generator=g)
    tau = 1.0

    def z(x):
        return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-7) / tau

    def bern_kl(p, q):
        return p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()

    pt, ps = torch.sigmoid(z(t)), torch.sigmoid(z(s))
    ours = LogitStandardisedKD(temperature=tau, regions=True)(t, s).item()
    assert ours == pytest.approx((tau * tau * bern_kl(pt, ps).mean()).item(), rel=1e-5, abs=0)
    swapped = (tau * tau * bern_kl(ps, pt).mean()).item()  # the official argument order
    assert abs(ours - swapped) > 0.05 * ours


def test_slkd_softmax_hand_example_matches_kl_div():
    # 1 voxel, 3 classes. Teacher [1,2,3]: mean 2, unbiased std 1 -> z = (-1, 0, 1);
    # student [3,3,0]: mean 2, deviations (1,1,-2), var 6/2 = 3 -> z = (1,1,-2)/sqrt3.
    t = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    s = torch.tensor([3.0, 3.0, 0.0]).view(1, 3, 1, 1)
    tau = 7.0
    zt = [-1 / tau, 0.0, 1 / tau]
    zs = [v / (math.sqrt(3) * tau) for v in (1.0, 1.0, -2.0)]
    qt = [math.exp(v) / sum(math.exp(u) for u in zt) for v in zt]
    qs = [math.exp(v) / sum(math.exp(u) for u in zs) for v in zs]
    hand = tau * tau * sum(a * math.log(a / b) for a, b in zip(qt, qs))
    loss = LogitStandardisedKD(temperature=tau, regions=False)(t, s)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(hand, rel=1e-5, abs=0)
    ref = F.kl_div(torch.log_softmax(torch.tensor(zs), 0), torch.softmax(torch.tensor(zt), 0), reduction="sum")
    assert loss.item() == pytest.approx(tau * tau * ref.item(), rel=1e-5, abs=0)


def test_slkd_softmax_random_matches_kl_div_mean_over_voxels():
    g = _gen(8)
    t, s = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    tau = 7.0

    def z(x):
        return (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-7) / tau

    n_voxels = 2 * 3 * 5
    ref = F.kl_div(torch.log_softmax(z(s), 1), torch.softmax(z(t), 1), reduction="sum") / n_voxels * tau * tau
    kd = LogitStandardisedKD(temperature=tau, regions=False)
    assert kd(t, s).item() == pytest.approx(ref.item(), rel=1e-5, abs=0)
    # class-axis standardisation: a different constant per voxel (added to all classes) changes nothing
    per_voxel = torch.randn(2, 1, 3, 5, generator=g) * 10
    assert kd(t + per_voxel, s).item() == pytest.approx(ref.item(), rel=1e-4, abs=0)
    assert kd(t, t.clone()).item() == 0.0


def test_slkd_needs_two_values_to_standardise():
    with pytest.raises(ValueError):
        LogitStandardisedKD(regions=True)(torch.zeros(1, 2, 1), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError):
        LogitStandardisedKD(temperature=0.0)


# ------------------------------------------------------------------------------------------------------ GSME
def test_gram_hand_example_one_channel():
    # B = C = 1, 2 voxels: M = <x1, x2> / (C * S) = dot / 2 for pairs (f0,f2), (f1,f0), (f2,f1)
    f0, f1, f2 = (torch.tensor(v).view(1, 1, 2) for v in ([1.0, 1.0], [1.0, 2.0], [2.0, 0.0]))
    zeros = [torch.zeros(1, 1, 2)] * 3
    # dots: f0.f2 = 2 -> 1 ; f1.f0 = 3 -> 1.5 ; f2.f1 = 2 -> 1 ; sum of squares 4.25 ; / (4 C^2 S^2) = / 16
    assert GramStyleLoss(scale=1.0)([f0, f1, f2], zeros).item() == pytest.approx(4.25 / 16)
    assert GramStyleLoss()([f0, f1, f2], zeros).item() == pytest.approx(1e-4 * 4.25 / 16, rel=1e-6, abs=0)


def _official_gs(gs_f, gs_m):
    """The official losses.get_GS_loss written out (B*C x B*C mix matrices, H*W normaliser)."""
    def mix(a, b):
        n, c = a.shape[:2]
        x1, x2 = a.reshape(n * c, -1), b.reshape(n * c, -1)
        return x1 @ x2.t() / a.numel()
    c, size = gs_f[0].size(1), gs_f[0].size(2) * gs_f[0].size(3)
    total = 0.0
    for i in range(3):
        total = total + ((mix(gs_f[i], gs_f[i - 1]) - mix(gs_m[i], gs_m[i - 1])) ** 2).sum() / (4 * c ** 2 * size ** 2)
    return total * 1e-4


def test_gram_official_form_and_depth_normaliser():
    g = _gen(9)
    t = [torch.randn(1, 2, 3, 2, 2, generator=g) for _ in range(3)]
    s = [torch.randn(1, 2, 3, 2, 2, generator=g) for _ in range(3)]
    official = _official_gs(t, s).item()
    assert GramStyleLoss(per_sample=True, ignore_depth=True)(t, s).item() == pytest.approx(official, rel=1e-5, abs=0)
    assert GramStyleLoss(per_sample=False, ignore_depth=True)(t, s).item() == pytest.approx(official, rel=1e-5, abs=0)
    # full spatial normaliser: (S / (H W))^2 = D^2 = 4 times smaller
    assert GramStyleLoss()(t, s).item() == pytest.approx(official / 4, rel=1e-5, abs=0)
    t2 = [torch.randn(2, 2, 3, 2, 2, generator=g) for _ in range(3)]
    s2 = [torch.randn(2, 2, 3, 2, 2, generator=g) for _ in range(3)]
    assert GramStyleLoss(per_sample=False, ignore_depth=True)(t2, s2).item() == pytest.approx(
        _official_gs(t2, s2).item(), rel=1e-5, abs=0)


def test_gram_per_sample_is_the_mean_of_single_sample_losses():
    g = _gen(10)
    t = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    s = [torch.randn(2, 3, 4, 4, generator=g) for _ in range(3)]
    gram = GramStyleLoss()
    singles = [gram([f[b:b + 1] for f in t], [f[b:b + 1] for f in s]).item() for b in range(2)]
    assert gram(t, s).item() == pytest.approx(sum(singles) / 2, rel=1e-5, abs=0)
    # per-sample identical features -> 0 even though the two samples differ from each other
    assert gram(t, [f.clone() for f in t]).item() == 0.0
    # the official B*C mixing form is not per-sample: it differs for B = 2
    assert GramStyleLoss(per_sample=False)(t, s).item() != pytest.approx(gram(t, s).item(), rel=1e-3, abs=0)


def test_gram_is_float32_under_autocast():
    g = _gen(11)
    t = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(3)]
    s = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(3)]
    ref = GramStyleLoss(scale=1.0)(t, s)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        # autocast is active here
        assert torch.bmm(t[0].flatten(2), t[0].flatten(2).transpose(1, 2)).dtype == torch.bfloat16
        loss = GramStyleLoss(scale=1.0)(t, s)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6, abs=0)


def test_gram_rejects_unequal_shapes():
    with pytest.raises(ValueError):
        GramStyleLoss()([torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3)],
                        [torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2, 3)])


def test_adversarial_losses_are_bce_with_the_official_labels():
    l3 = math.log(3)  # sigmoid(ln 3) = 0.75
    # generator: student maps labelled as teacher (0): -log(1 - 0.75) = ln 4
    assert generator_adversarial_loss(torch.tensor([[l3]])).item() == pytest.approx(math.log(4))
    # discriminator: teacher at sigmoid = .25 vs label 0 -> ln(4/3); student at .75 vs label 1 -> ln(4/3)
    assert discriminator_loss(torch.tensor([[-l3]]), torch.tensor([[l3]])).item() == pytest.approx(
        2 * math.log(4 / 3))
    g = _gen(12)
    t, s = torch.randn(3, 1, generator=g), torch.randn(3, 1, generator=g)
    assert generator_adversarial_loss(s).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(s, torch.zeros_like(s)).item())
    assert discriminator_loss(t, s).item() == pytest.approx(
        (F.binary_cross_entropy_with_logits(t, torch.zeros_like(t))
         + F.binary_cross_entropy_with_logits(s, torch.ones_like(s))).item())
    assert generator_adversarial_loss(s.half()).dtype == torch.float32
    assert discriminator_loss(t.half(), s.half()).dtype == torch.float32


# ------------------------------------------------------------------------------------------------------ gradients
def _cases():
    g = _gen(13)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    def soft(*shape):
        return torch.softmax(rnd(*shape), -1)

    return {
        "evd": ([soft(1, 2, 4, 4) for _ in range(4)], [soft(1, 2, 4, 4) for _ in range(4)],
                lambda t, s: EVDLoss()(t, s)),
        "mst": ([rnd(1, 2, 3), rnd(1, 4, 2)], [rnd(1, 2, 3), rnd(1, 4, 2)],
                lambda t, s: MultiScaleTransformerLoss()(t, s)),
        "content": ([rnd(1, 2, 3)], [rnd(1, 2, 3)], lambda t, s: ContentLoss()(t[0], s[0])),
        "consistency_regions": ([rnd(2, 3, 4)], [rnd(2, 3, 4)],
                                lambda t, s: ConsistencyLoss(regions=True)(t[0], s[0])),
        "consistency_softmax": ([rnd(2, 3, 4)], [rnd(2, 3, 4)],
                                lambda t, s: ConsistencyLoss(regions=False)(t[0], s[0])),
        "slkd_regions": ([rnd(2, 3, 4)], [rnd(2, 3, 4)], lambda t, s: LogitStandardisedKD(regions=True)(t[0], s[0])),
        "slkd_softmax": ([rnd(2, 3, 4)], [rnd(2, 3, 4)],
                         lambda t, s: LogitStandardisedKD(regions=False)(t[0], s[0])),
        "gram": ([rnd(1, 2, 3, 3) for _ in range(3)], [rnd(1, 2, 3, 3) for _ in range(3)],
                 lambda t, s: GramStyleLoss()(t, s)),
        "discriminator": ([rnd(2, 1)], [rnd(2, 1)], lambda t, s: discriminator_loss(t[0], s[0])),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("detach_teacher", [False, True])
def test_gradients_reach_student_and_teacher_unless_detached(name, detach_teacher):
    teacher, student, fn = _cases()[name]
    for x in teacher + student:
        x.requires_grad_(True)
    loss = fn([x.detach() for x in teacher] if detach_teacher else teacher, student)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    loss.backward()
    for x in student:
        assert x.grad is not None and x.grad.abs().sum() > 0
    for x in teacher:
        if detach_teacher:
            assert x.grad is None
        else:
            assert x.grad is not None and x.grad.abs().sum() > 0


def test_generator_adversarial_gradient_reaches_student_logits():
    s = torch.tensor([[0.3], [-1.0]], requires_grad=True)
    generator_adversarial_loss(s).backward()
    # d/dx BCE(x, 0) = sigmoid(x) / n
    assert torch.allclose(s.grad, torch.sigmoid(s.detach()) / 2)
