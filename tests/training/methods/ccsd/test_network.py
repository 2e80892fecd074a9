"""CCSD shared-specific network (ShaSpec backbone on the planned nnU-Net U-Net), on tiny plans."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nnunet_missingmod.modalities import (
    MODALITIES, SUBSETS, PresenceAware, apply_channel_mask, subset_channel_masks, tell_present_channels)
from nnunet_missingmod.training.methods.ccsd.network import DOMAIN_LOGITS, FUSED, MODALITY_FEATURES, PRESENT, \
    SHARED_FEATURES, SPECIFIC_FEATURES, SUBSET_LOGITS, build_ccsd_network
from nnunet_missingmod.training.features import DECODER, ENCODER, LOGITS, planned_network
from plans_helpers import tiny_2d, tiny_3d

torch.set_num_threads(1)

PLANS = {"3d": lambda: tiny_3d(), "3d_residual": lambda: tiny_3d(residual=True), "2d": tiny_2d}
N_IN, N_OUT, BATCH = 4, 3, 2
FULL = len(SUBSETS) - 1
# Single sequences, pairs, triples and the full set; T2+FLAIR (9) misses the first channels (shaspec substitute = T2).
SOME_SUBSETS = (0, 3, 6, 9, 13, FULL)
TOL = dict(atol=1e-5, rtol=1e-4)


def _build(plan="3d", deep_supervision=True, missing_slot="shaspec", channel_modalities=MODALITIES, seed=0,
           shared_width=1.0):
    plans_manager, configuration_manager = PLANS[plan]()
    torch.manual_seed(seed)
    network = build_ccsd_network(plans_manager, configuration_manager, N_IN, N_OUT, deep_supervision,
                                 missing_slot=missing_slot, channel_modalities=channel_modalities,
                                 shared_width=shared_width)
    # nnU-Net's init zeroes conv biases and sets norm affine to (1, 0), which makes E_sh(0) exactly 0 everywhere; a
    # bug that puts zeros where E_sh(0) belongs would then go unnoticed. Random parameters make every slot matter.
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return network, plans_manager, configuration_manager


def _input(configuration_manager, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, N_IN, *configuration_manager.patch_size, generator=generator)


def _as_list(output):
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _assert_close(a, b, **tol):
    a, b = _as_list(a), _as_list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, **(tol or TOL))


def _shapes(output):
    return [tuple(o.shape) for o in _as_list(output)]


# ------------------------------------------------------------------------------------- cache == direct computation
@pytest.mark.parametrize("plan,deep_supervision,missing_slot,shared_width", [
    (plan, ds, slot, 1.0) for plan, ds, slot in itertools.product(PLANS, (True, False), ("shaspec", "literal"))] + [
    ("3d", True, "shaspec", 0.5), ("3d_residual", False, "literal", 0.5), ("2d", True, "shaspec", 0.5)])
def test_subset_logits_from_the_cache_equal_direct_masked_calls(plan, deep_supervision, missing_slot, shared_width):
    network, _, configuration_manager = _build(plan, deep_supervision, missing_slot, shared_width=shared_width)
    x = _input(configuration_manager)
    masks = subset_channel_masks(MODALITIES)
    with torch.no_grad():
        cached = network(x, return_features=True, decode_subsets=SOME_SUBSETS)
        assert sorted(cached[SUBSET_LOGITS]) == sorted(SOME_SUBSETS)
        for i in SOME_SUBSETS:
            network.set_present_channels(masks[i])
            direct = network(apply_channel_mask(x, masks[i]))
            _assert_close(cached[SUBSET_LOGITS][i], direct)
        # a per-sample (B, C) mask: each row gets its own subset's output
        rows = (3, 9)
        network.set_present_channels(masks[list(rows)])
        per_sample = _as_list(network(x))
        for b, i in enumerate(rows):
            _assert_close([o[b] for o in per_sample], [o[b] for o in _as_list(cached[SUBSET_LOGITS][i])])
        network.set_present_channels(None)
        _assert_close(cached[SUBSET_LOGITS][FULL], network(x))
        _assert_close(cached[LOGITS], network(x))


def test_missing_slot_choices_give_different_outputs():
    x = _input(tiny_3d()[1])
    outputs = {}
    for slot in ("shaspec", "literal"):
        network, _, _ = _build(missing_slot=slot)
        with torch.no_grad():
            outputs[slot] = network(x, return_features=True, decode_subsets=(0, FULL))
    # same weights (same seed): the full set agrees, a subset with a missing sequence does not
    _assert_close(outputs["shaspec"][SUBSET_LOGITS][FULL], outputs["literal"][SUBSET_LOGITS][FULL])
    assert not torch.allclose(outputs["shaspec"][SUBSET_LOGITS][0][0], outputs["literal"][SUBSET_LOGITS][0][0])


@pytest.mark.parametrize("missing_slot", ["shaspec", "literal"])
@pytest.mark.parametrize("channel_modalities", [MODALITIES, ("FLAIR", "T2", "T1", "T1ce")])
def test_fused_is_the_reduced_concatenation_of_the_slots(missing_slot, channel_modalities):
    """F_S = reduce(cat_m slot_m): f_m if m in S, else the shared feature of the first available sequence in the
    dataset's channel order (shaspec) or E_sh(0) (literal)."""
    network, _, configuration_manager = _build(missing_slot=missing_slot, channel_modalities=channel_modalities)
    x = _input(configuration_manager)
    with torch.no_grad():
        out = network(x, return_features=True)
        spatial = x.shape[2:]
        zero_bottleneck = network.shared_encoder(torch.zeros(1, 1, *spatial))[-1][0]
        for i, subset in enumerate(SUBSETS):
            present_channels = [c for c, m in enumerate(channel_modalities) if subset.present[MODALITIES.index(m)]]
            first = MODALITIES.index(channel_modalities[present_channels[0]])
            slots = []
            for m in range(len(MODALITIES)):
                if subset.present[m]:
                    slots.append(out[MODALITY_FEATURES][:, m])
                elif missing_slot == "shaspec":
                    slots.append(out[SHARED_FEATURES][:, first])
                else:
                    slots.append(zero_bottleneck.expand_as(out[SHARED_FEATURES][:, 0]))
            expected = network.reductions[-1](torch.cat(slots, 1))
            # E_sh(0) alone vs inside the batched pass: a few 1e-5 of float noise
            torch.testing.assert_close(out[FUSED][:, i], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("plan", ["3d", "2d"])
def test_unified_skips_are_the_reduced_concatenation_of_shared_skips_and_zero_image_skips(plan):
    """Skip l of subset S = reduce_l(cat_m [E_sh(x_m)^l if m in S else E_sh(0)^l]), the bottleneck being F_S."""
    network, _, configuration_manager = _build(plan)
    x = _input(configuration_manager)
    masks = subset_channel_masks(MODALITIES)
    with torch.no_grad():
        real = network.shared_encoder(x.reshape(-1, 1, *x.shape[2:]))  # (B*M, C_l, *s_l) per level
        zero = network.shared_encoder(torch.zeros(1, 1, *x.shape[2:]))
        for i in (2, 8, FULL):
            network.set_present_channels(masks[i])
            out = network(x, return_features=True)
            for level in range(len(real) - 1):
                per_modality = real[level].view(BATCH, len(MODALITIES), *real[level].shape[1:])
                slots = [per_modality[:, m] if SUBSETS[i].present[m] else zero[level].expand_as(per_modality[:, m])
                         for m in range(len(MODALITIES))]
                expected = network.reductions[level](torch.cat(slots, 1))
                torch.testing.assert_close(out[ENCODER][level], expected, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(out[ENCODER][-1], out[FUSED][:, i], **TOL)


def test_channel_order_maps_to_canonical_modalities():
    """A dataset storing the sequences in another channel order gives the same full-set output and features."""
    order = ("FLAIR", "T2", "T1", "T1ce")
    canonical, _, configuration_manager = _build()
    permuted, _, _ = _build(channel_modalities=order)
    permuted.load_state_dict(canonical.state_dict(), strict=True)
    x = _input(configuration_manager)
    x_permuted = x[:, [MODALITIES.index(m) for m in order]]
    with torch.no_grad():
        a = canonical(x, return_features=True, decode_subsets=(FULL,))
        b = permuted(x_permuted, return_features=True, decode_subsets=(FULL,))
    _assert_close(a[LOGITS], b[LOGITS])
    for key in (MODALITY_FEATURES, SHARED_FEATURES, SPECIFIC_FEATURES, DOMAIN_LOGITS):
        torch.testing.assert_close(a[key], b[key], **TOL)
    # a subset is a set of modalities, not of channel positions: FLAIR alone is channel 0 here, channel 3 there
    flair = SUBSETS.index(next(s for s in SUBSETS if s.modalities == ("FLAIR",)))
    canonical.set_present_channels(subset_channel_masks(MODALITIES)[flair])
    permuted.set_present_channels(subset_channel_masks(order)[flair])
    with torch.no_grad():
        _assert_close(canonical(x), permuted(x_permuted))


# -------------------------------------------------------------------------------------------------------- no leak
@pytest.mark.parametrize("missing_slot,shared_width", [("shaspec", 1.0), ("literal", 1.0), ("shaspec", 0.5)])
def test_values_of_a_missing_sequence_never_reach_the_output(missing_slot, shared_width):
    network, _, configuration_manager = _build(missing_slot=missing_slot, shared_width=shared_width)
    x = _input(configuration_manager)
    masks = subset_channel_masks(MODALITIES)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        reference = network(x, return_features=True, decode_subsets=SOME_SUBSETS[:-1])
        for i in SOME_SUBSETS[:-1]:
            missing = ~masks[i]
            changed = x.clone()
            changed[:, missing] = 50 * torch.randn(changed[:, missing].shape, generator=generator)
            # 1) the cache: the subset's output and F_S ignore the real images of its missing sequences
            again = network(changed, return_features=True, decode_subsets=(i,))
            _assert_close(again[SUBSET_LOGITS][i], reference[SUBSET_LOGITS][i])
            torch.testing.assert_close(again[FUSED][:, i], reference[FUSED][:, i], **TOL)
            # 2) the mask set by the predictor
            network.set_present_channels(masks[i])
            _assert_close(network(changed), network(x))
            # 3) the derived mask: zero-filled missing channels give that same output
            masked_output = network(x)
            network.set_present_channels(None)
            _assert_close(network(apply_channel_mask(changed, masks[i])), masked_output)


def test_derived_mask_equals_explicit_mask():
    network, _, configuration_manager = _build()
    x = _input(configuration_manager)
    masks = subset_channel_masks(MODALITIES)
    with torch.no_grad():
        for i in SOME_SUBSETS:
            network.set_present_channels(None)
            derived = network(apply_channel_mask(x, masks[i]), return_features=True)
            assert derived[PRESENT].equal(masks[i].expand(BATCH, -1))
            network.set_present_channels(masks[i])
            explicit = network(x, return_features=True)
            _assert_close(derived[LOGITS], explicit[LOGITS])
        # per sample: each row of a zero-filled batch derives its own subset
        rows = masks[[2, 12]]
        network.set_present_channels(None)
        derived = network(apply_channel_mask(x, rows), return_features=True)
        assert derived[PRESENT].equal(rows)
        network.set_present_channels(rows)
        _assert_close(derived[LOGITS], network(x))
        # an all-zero sample (a background tile) counts as complete, next to a sample with a missing sequence
        network.set_present_channels(None)
        zeros = apply_channel_mask(x, rows)
        zeros[0] = 0
        derived = network(zeros, return_features=True)
        assert derived[PRESENT][0].all() and derived[PRESENT][1].equal(rows[1])


# ------------------------------------------------------------------------------------------------ shapes and cost
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("deep_supervision", [True, False])
def test_output_shapes_match_the_planned_network(plan, deep_supervision):
    network, plans_manager, configuration_manager = _build(plan, deep_supervision)
    planned = planned_network(plans_manager, configuration_manager, N_IN, N_OUT, deep_supervision)
    x = _input(configuration_manager)
    with torch.no_grad():
        expected = _shapes(planned(x))
        assert _shapes(network(x)) == expected
        out = network(x, return_features=True, decode_subsets=(4,))
        assert _shapes(out[LOGITS]) == expected and _shapes(out[SUBSET_LOGITS][4]) == expected
        planned_skips = planned.encoder(x)
        assert [tuple(s.shape) for s in out[ENCODER]] == [tuple(s.shape) for s in planned_skips]
        assert len(out[DECODER]) == len(planned_skips) - 1
        bottleneck = planned_skips[-1].shape[1:]
        m = len(MODALITIES)
        assert tuple(out[FUSED].shape) == (BATCH, len(SUBSETS), *bottleneck)
        for key in (MODALITY_FEATURES, SHARED_FEATURES):
            assert tuple(out[key].shape) == (BATCH, m, *bottleneck)
        specific_channels = round(0.5 * bottleneck[0])
        assert tuple(out[SPECIFIC_FEATURES].shape) == (BATCH, m, specific_channels, *bottleneck[1:])
        assert tuple(out[DOMAIN_LOGITS].shape) == (BATCH, m, m)
        # nnU-Net switches deep supervision off for inference through decoder.deep_supervision
        network.decoder.deep_supervision = False
        assert _shapes(network(x)) == [expected[0]]


def test_specific_encoders_have_scaled_widths():
    plans_manager, configuration_manager = tiny_3d()
    planned_widths = list(configuration_manager.network_arch_init_kwargs["features_per_stage"])
    network = build_ccsd_network(plans_manager, configuration_manager, N_IN, N_OUT, True, specific_width=0.25)
    assert list(network.shared_encoder.output_channels) == planned_widths
    for encoder in network.specific_encoders:
        assert list(encoder.output_channels) == [max(1, round(w * 0.25)) for w in planned_widths]


@pytest.mark.parametrize("plan", ["3d", "3d_residual"])
def test_narrow_shared_encoder_keeps_the_planned_decoder_and_registers_no_unused_encoder(plan):
    network, plans_manager, configuration_manager = _build(plan, shared_width=0.5)
    planned = planned_network(plans_manager, configuration_manager, N_IN, N_OUT, True)
    planned_widths = list(planned.encoder.output_channels)
    assert list(network.shared_encoder.output_channels) == [max(1, round(w * 0.5)) for w in planned_widths]
    assert [r.out_channels for r in network.reductions] == planned_widths
    assert [r.in_channels for r in network.reductions] == [len(MODALITIES) * max(1, round(w * 0.5))
                                                           for w in planned_widths]
    decoder_parameters = {k: v.shape for k, v in network.decoder.state_dict().items() if not k.startswith("encoder.")}
    assert decoder_parameters == {k: v.shape for k, v in planned.decoder.state_dict().items()
                                  if not k.startswith("encoder.")}
    # the decoder's encoder reference is the encoder that runs: the state_dict holds no planned-width encoder
    assert network.decoder.encoder is network.shared_encoder
    registered = sum(p.numel() for p in network.parameters())  # parameters() deduplicates shared modules
    full_width, _, _ = _build(plan)
    assert registered < sum(p.numel() for p in full_width.parameters())
    x = _input(configuration_manager)
    with torch.no_grad():
        assert _shapes(network(x)) == _shapes(planned(x))


def test_encoders_run_once_per_step_and_subsets_share_one_decoder_call():
    network, _, configuration_manager = _build()
    calls = {"shared": 0, "specific": 0, "decoder": 0}
    network.shared_encoder.register_forward_hook(lambda *_: calls.__setitem__("shared", calls["shared"] + 1))
    for encoder in network.specific_encoders:
        encoder.register_forward_hook(lambda *_: calls.__setitem__("specific", calls["specific"] + 1))
    network.decoder.stages[0].register_forward_hook(lambda *_: calls.__setitem__("decoder", calls["decoder"] + 1))
    with torch.no_grad():
        network(_input(configuration_manager), return_features=True, decode_subsets=range(len(SUBSETS)))
    # 1 shared pass (4 sequences + the zero image folded into the batch), 4 specific, current mask + 15 subsets
    assert calls == {"shared": 1, "specific": 4, "decoder": 2}


# ----------------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("missing_slot,shared_width", [("shaspec", 1.0), ("literal", 1.0), ("shaspec", 0.5)])
def test_every_parameter_gets_a_gradient_from_full_subsets_and_auxiliary_losses(missing_slot, shared_width):
    network, _, configuration_manager = _build("3d_residual", True, missing_slot, shared_width=shared_width)
    out = network(_input(configuration_manager), return_features=True, decode_subsets=(0, 7, 12))
    loss = sum(o.square().mean() for o in out[LOGITS])
    loss = loss + sum(o.square().mean() for logits in out[SUBSET_LOGITS].values() for o in logits)
    loss = loss + (out[FUSED][:, FULL].detach() - out[FUSED][:, 12]).square().mean()  # DMCD-like
    shared = out[SHARED_FEATURES]
    loss = loss + (shared - shared.roll(-1, 1)).abs().mean()  # ShaSpec L_shared
    m = len(MODALITIES)
    loss = loss + F.cross_entropy(out[DOMAIN_LOGITS].reshape(-1, m), torch.arange(m).repeat(BATCH))  # L_spec
    loss.backward()
    missing = [name for name, p in network.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_missing_sequence_features_get_no_gradient_through_a_subset():
    """Through a subset's output, the missing sequences' real-image features get exactly zero gradient."""
    network, _, configuration_manager = _build()
    x = _input(configuration_manager).requires_grad_(True)
    out = network(x, return_features=True, decode_subsets=(1,))  # T1ce alone
    sum(o.sum() for o in out[SUBSET_LOGITS][1]).backward()
    gradient_per_channel = x.grad.abs().flatten(2).sum(2)  # (B, C)
    assert (gradient_per_channel[:, 1] > 0).all()
    assert gradient_per_channel[:, [0, 2, 3]].eq(0).all()


# ------------------------------------------------------------------------------------- state dict and the mask hook
def test_state_dict_is_unchanged_by_the_mask_and_loads_strictly():
    network, _, configuration_manager = _build()
    keys_before = list(network.state_dict())
    network.set_present_channels(torch.tensor([True, False, True, True]))
    assert list(network.state_dict()) == keys_before
    rows = torch.tensor([[True, False, True, True], [False, False, False, True]])
    network.set_present_channels(rows)
    assert list(network.state_dict()) == keys_before
    fresh, _, _ = _build(seed=3)
    fresh.load_state_dict(network.state_dict(), strict=True)
    fresh.set_present_channels(rows)
    x = _input(configuration_manager)
    with torch.no_grad():
        _assert_close(fresh(x), network(x))
        network.set_present_channels(None)
        assert list(network.state_dict()) == keys_before
        assert network(x, return_features=True)[PRESENT].all()  # cleared: read from the (complete) input again


def test_the_predictor_tells_it_the_case_mask_through_the_presence_contract():
    network, _, configuration_manager = _build()
    assert isinstance(network, PresenceAware)
    x = _input(configuration_manager)
    mask = subset_channel_masks(MODALITIES)[9]
    with torch.no_grad():
        assert tell_present_channels(network, mask) == 1
        told = network(x, return_features=True)
        assert told[PRESENT].equal(mask.expand(BATCH, -1))
        assert tell_present_channels(network, None) == 1
        _assert_close(told[LOGITS], network(apply_channel_mask(x, mask)))


def test_invalid_arguments_are_rejected():
    network, plans_manager, configuration_manager = _build()
    x = _input(configuration_manager)
    network.set_present_channels(torch.tensor([True, False, True]))  # wrong channel count
    with pytest.raises(ValueError, match="does not fit input"):
        network(x)
    network.set_present_channels(torch.tensor([[True, True, True, True], [False] * 4]))  # empty row
    with pytest.raises(ValueError, match="at least one present"):
        network(x)
    network.set_present_channels(None)
    with pytest.raises(ValueError):
        network(x, decode_subsets=(0,))  # subsets need the features dict
    with pytest.raises(ValueError):
        network(x, return_features=True, decode_subsets=(15,))
    network.set_present_channels(torch.ones(BATCH + 1, N_IN, dtype=torch.bool))
    with pytest.raises(ValueError):
        network(x)  # per-sample mask for another batch size
    with pytest.raises(ValueError):
        build_ccsd_network(plans_manager, configuration_manager, 3, N_OUT, True)
    with pytest.raises(ValueError):
        build_ccsd_network(plans_manager, configuration_manager, N_IN, N_OUT, True, missing_slot="mean")
    with pytest.raises(ValueError, match="shared_width"):
        build_ccsd_network(plans_manager, configuration_manager, N_IN, N_OUT, True, shared_width=0)
