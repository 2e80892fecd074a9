"""Unit tests of the modality-subset core."""
import collections

import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import (
    FULL_SET, MODALITIES, SUBSET_NAMES, SUBSETS, ModalitySubset, apply_channel_mask, canonical_modality,
    modalities_from_channel_names, parse_subset, parse_subsets, sample_subset_indices,
    subset_channel_masks, subset_of_channel_mask)


@pytest.mark.parametrize("alias, canonical", [
    ("t1", "T1"), ("T1n", "T1"), ("T1w", "T1"), ("t1ce", "T1ce"), ("t1c", "T1ce"), ("t1gd", "T1ce"),
    ("T1C", "T1ce"), ("T1-Gd", "T1ce"), ("t2", "T2"), ("t2w", "T2"), ("T2W", "T2"), ("flair", "FLAIR"),
    ("t2f", "FLAIR"), ("T2F", "FLAIR"), ("Flair", "FLAIR"), (" FLAIR ", "FLAIR"), ("T2-FLAIR", "FLAIR")])
def test_aliases_of_every_brats_year_and_msd(alias, canonical):
    assert canonical_modality(alias) == canonical


@pytest.mark.parametrize("bad", ["T3", "dwi", "", "CT"])
def test_unknown_modality_names_the_value(bad):
    with pytest.raises(MissingModError, match=f"unknown modality {bad!r}"):
        canonical_modality(bad)


def test_fifteen_subsets_in_the_documented_order():
    assert len(SUBSETS) == 15 == len(set(SUBSETS))
    assert SUBSET_NAMES == (
        "T1", "T1ce", "T2", "FLAIR",
        "T1+T1ce", "T1+T2", "T1+FLAIR", "T1ce+T2", "T1ce+FLAIR", "T2+FLAIR",
        "T1+T1ce+T2", "T1+T1ce+FLAIR", "T1+T2+FLAIR", "T1ce+T2+FLAIR",
        "T1+T1ce+T2+FLAIR")
    assert [s.cardinality for s in SUBSETS] == [1] * 4 + [2] * 6 + [3] * 4 + [4]
    assert FULL_SET is SUBSETS[-1] and FULL_SET.is_full and FULL_SET.missing == ()
    assert SUBSETS[8].missing == ("T1", "T2")


@pytest.mark.parametrize("text, name", [
    ("T1ce,FLAIR", "T1ce+FLAIR"), ("flair+t1c", "T1ce+FLAIR"), ("t2w", "T2"), ("all", "T1+T1ce+T2+FLAIR"),
    (" t1n , t1c ,t2w, t2f ", "T1+T1ce+T2+FLAIR"), (["FLAIR", "T1"], "T1+FLAIR")])
def test_parse_subset(text, name):
    assert parse_subset(text).name == name


@pytest.mark.parametrize("text, message", [
    ("", "empty modality subset"), (" , ", "empty modality subset"), ([], "empty modality subset"),
    ("T1,t1n", "listed twice.*T1"), ("T1,PD", "unknown modality 'PD'")])
def test_parse_subset_rejects_bad_input(text, message):
    with pytest.raises(MissingModError, match=message):
        parse_subset(text)


def test_empty_subset_cannot_be_built():
    with pytest.raises(MissingModError, match="empty modality subset is not allowed"):
        ModalitySubset((False, False, False, False))


def test_parse_subsets_keeps_fixed_order_and_defaults_to_all():
    assert parse_subsets(None) == SUBSETS
    assert parse_subsets("all15") == SUBSETS
    assert [s.name for s in parse_subsets("FLAIR;T1ce+T2 T2;flair")] == ["T2", "FLAIR", "T1ce+T2"]
    with pytest.raises(MissingModError, match="no modality subset"):
        parse_subsets(" ; ")


def test_channel_names_in_any_order_and_spelling():
    assert modalities_from_channel_names({"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}) == MODALITIES
    # MSD order
    assert modalities_from_channel_names({"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}) == (
        "FLAIR", "T1", "T1ce", "T2")
    assert modalities_from_channel_names({0: "t1n", 1: "t1c", 2: "t2w", 3: "t2f"}) == MODALITIES


@pytest.mark.parametrize("channel_names, message", [
    ({"0": "T1", "1": "t1n", "2": "T2", "3": "FLAIR"}, r"ambiguous channel_names: channels \[0, 1\]"),
    ({"0": "T1", "1": "T1ce", "2": "T2", "3": "PD"}, r"channel 3 \('PD'\).*unknown modality"),
    ({"0": "T1", "1": "T1ce", "2": "T2"}, "has no FLAIR channel"),
    ({"0": "T1", "1": "T1ce", "2": "T2", "4": "FLAIR"}, "numbered 0..3"),
    ({"a": "T1"}, "channel indices"),
])
def test_channel_names_errors(channel_names, message):
    with pytest.raises(MissingModError, match=message):
        modalities_from_channel_names(channel_names)


def test_channel_mask_follows_dataset_channel_order():
    msd_order = ("FLAIR", "T1", "T1ce", "T2")
    subset = parse_subset("T1ce,FLAIR")
    assert subset.channel_mask(MODALITIES) == (False, True, False, True)
    assert subset.channel_mask(msd_order) == (True, False, True, False)
    assert subset_of_channel_mask((True, False, True, False), msd_order) == subset
    masks = subset_channel_masks(msd_order)
    assert masks.shape == (15, 4) and masks.dtype == torch.bool
    assert masks[8].tolist() == [True, False, True, False]
    with pytest.raises(MissingModError, match="3 entries for 4 channels"):
        subset_of_channel_mask((True, False, True), msd_order)


def test_uniform_sampling_covers_all_fifteen_evenly_and_never_empty():
    g = torch.Generator().manual_seed(0)
    counts = collections.Counter(sample_subset_indices(30000, "uniform", generator=g).tolist())
    assert set(counts) == set(range(15))
    assert all(abs(n / 30000 - 1 / 15) < 0.01 for n in counts.values())


def test_cardinality_sampling_is_uniform_over_sizes_then_subsets():
    g = torch.Generator().manual_seed(1)
    idx = sample_subset_indices(40000, "cardinality", generator=g)
    sizes = collections.Counter(SUBSETS[i].cardinality for i in idx.tolist())
    assert all(abs(sizes[k] / 40000 - 0.25) < 0.01 for k in (1, 2, 3, 4))
    per_subset = collections.Counter(idx.tolist())
    assert abs(per_subset[0] / 40000 - 1 / 16) < 0.01  # a single sequence: 1/4 * 1/4
    assert abs(per_subset[4] / 40000 - 1 / 24) < 0.01  # a pair: 1/4 * 1/6
    assert abs(per_subset[14] / 40000 - 1 / 4) < 0.01


def test_full_set_probability():
    g = torch.Generator().manual_seed(2)
    idx = sample_subset_indices(20000, "uniform", full_set_probability=0.5, generator=g)
    share_full = (idx == 14).double().mean().item()
    assert abs(share_full - 0.5) < 0.015
    assert set(idx[idx != 14].tolist()) == set(range(14))
    never_full = sample_subset_indices(5000, "uniform", full_set_probability=0.0, generator=g)
    assert 14 not in never_full.tolist()


def test_sampling_rejects_bad_settings():
    with pytest.raises(MissingModError, match="unknown subset sampling 'random'"):
        sample_subset_indices(2, "random")
    with pytest.raises(MissingModError, match="full_set_probability must lie in"):
        sample_subset_indices(2, full_set_probability=1.5)


def test_sampling_is_reproducible_with_a_generator():
    masks = subset_channel_masks(MODALITIES)
    a = masks[sample_subset_indices(16, generator=torch.Generator().manual_seed(3))]
    b = masks[sample_subset_indices(16, generator=torch.Generator().manual_seed(3))]
    assert torch.equal(a, b) and a.shape == (16, 4) and a.any(dim=1).all()


def test_apply_channel_mask_per_sample_and_shared():
    data = torch.arange(1, 2 * 4 * 2 * 2 * 2 + 1, dtype=torch.float32).view(2, 4, 2, 2, 2)
    data[0, 1, 0, 0, 0] = float("nan")
    mask = torch.tensor([[True, False, True, False], [False, False, False, True]])
    out = apply_channel_mask(data, mask)
    for b in range(2):
        for c in range(4):
            if mask[b, c]:
                assert torch.equal(out[b, c], data[b, c])
            else:
                assert (out[b, c] == 0).all()  # NaN in a dropped channel becomes 0 too
    shared = apply_channel_mask(data, torch.tensor([True, True, False, True]))
    assert (shared[:, 2] == 0).all() and torch.equal(shared[:, 3], data[:, 3])
    single_case = apply_channel_mask(data[1], torch.tensor([False, True, True, True]), channel_axis=0)
    assert (single_case[0] == 0).all() and torch.equal(single_case[1:], data[1, 1:])
    assert data[1, 0].sum() > 0  # the input is left untouched


def test_apply_channel_mask_rejects_mismatched_shapes():
    with pytest.raises(MissingModError, match="does not fit data"):
        apply_channel_mask(torch.zeros(2, 4, 3, 3, 3), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(MissingModError, match="does not fit data"):
        apply_channel_mask(torch.zeros(2, 4, 3, 3, 3), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(MissingModError, match="does not fit data"):
        apply_channel_mask(torch.zeros(2, 4, 3, 3, 3), torch.ones(5, dtype=torch.bool))


def test_paper_names_list_the_sequences_in_the_papers_order():
    from nnunet_missingmod.modalities import paper_subset_name
    assert paper_subset_name(parse_subset("t2, t1c, t2f")) == "FLAIR+T1ce+T2"
    assert paper_subset_name(FULL_SET) == "FLAIR+T1+T1ce+T2"
    assert paper_subset_name(parse_subset("T1")) == "T1"


# ---------------------------------------------------------------------------------------------- presence contract
def test_present_channels_reads_non_zero_channels_and_counts_an_all_zero_sample_as_complete():
    import torch

    from nnunet_missingmod.modalities import present_channels
    x = torch.zeros(3, 4, 2, 2, 2)
    x[0] = 1.0                    # every channel
    x[1, 1, 0, 0, 1] = -2.0       # channel 1 only (one voxel, negative)
    # x[2] is all zero: a background tile, complete by the contract
    assert present_channels(x).tolist() == [[True] * 4, [False, True, False, False], [True] * 4]
    told = torch.tensor([True, False, True, True])
    assert present_channels(x, told).tolist() == [told.tolist()] * 3  # the told mask wins over the zeros
    for bad in (torch.ones(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)):
        with pytest.raises(MissingModError, match="present-channel mask"):
            present_channels(x, bad)


def _presence_aware_networks():
    """A presence-conditioned U-Net (random per-pattern tables, so every pattern gives other logits) and a CCSD
    network, both on hand-written 3d plans with a 16³ patch."""
    import torch
    from plans_helpers import make_managers

    from nnunet_missingmod.training.methods.ccsd.network import build_ccsd_network
    from nnunet_missingmod.training.methods.dropout.presence import PresenceConditionedNorm, condition_on_presence
    plans_manager, configuration = make_managers([16, 16, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2]], [4, 8, 8])
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    torch.manual_seed(0)
    conditioned = condition_on_presence(get_network_from_plans(
        configuration.network_arch_class_name, configuration.network_arch_init_kwargs,
        configuration.network_arch_init_kwargs_req_import, 4, 3, deep_supervision=False), 4)
    with torch.no_grad():
        for norm in conditioned.modules():
            if isinstance(norm, PresenceConditionedNorm):
                norm.presence_scale.normal_(0, 0.5)
                norm.presence_shift.normal_(0, 0.5)
    ccsd = build_ccsd_network(plans_manager, configuration, 4, 3, enable_deep_supervision=False)
    return plans_manager, configuration, {"presence": conditioned.eval(), "ccsd": ccsd.eval()}


def _sliding_window(network, plans_manager, configuration, data):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                allow_tqdm=False)
    dataset_json = {"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
                    "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                               "enhancing tumor": 3}, "regions_class_order": [1, 2, 3], "file_ending": ".nii.gz"}
    predictor.manual_initialization(network, plans_manager, configuration, None, dataset_json, "test", None)
    with torch.no_grad():
        return predictor.predict_sliding_window_return_logits(data)


@pytest.mark.parametrize("kind", ["presence", "ccsd"])
def test_a_sliding_window_over_background_tiles_gives_the_told_masks_prediction_on_a_complete_case(kind):
    """A 16³ window slides over a 40×16×40 case whose brain fills one corner: several tiles see only the zeros that
    nnU-Net's masked normalisation leaves outside the brain. Told the complete mask or untold, the prediction is the
    same (an all-zero tile counts as complete); told a subset, every tile uses that subset's pattern."""
    import torch

    from nnunet_missingmod.modalities import tell_present_channels
    plans_manager, configuration, networks = _presence_aware_networks()
    network = networks[kind]
    torch.manual_seed(1)
    data = torch.zeros(4, 40, 16, 40)
    data[:, :14, :, :14] = torch.randn(4, 14, 16, 14)  # the brain: one corner; the other tiles are background
    untold = _sliding_window(network, plans_manager, configuration, data)
    assert tell_present_channels(network, torch.ones(4, dtype=torch.bool)) >= 1
    told_complete = _sliding_window(network, plans_manager, configuration, data)
    assert torch.equal(told_complete, untold)

    without_t1ce = torch.tensor([True, False, True, True])
    zeroed = data.clone()
    zeroed[1] = 0
    tell_present_channels(network, without_t1ce)
    told_subset = _sliding_window(network, plans_manager, configuration, zeroed)
    tell_present_channels(network, None)
    untold_subset = _sliding_window(network, plans_manager, configuration, zeroed)
    if kind == "presence":  # (CCSD's logits on an all-zero tile do not depend on the subset: its features are 0)
        background = (slice(None), slice(30, None), slice(None), slice(30, None))  # covered by background tiles only
        # untold, the background tiles read as complete; told, they use the case's subset: the logits there differ
        assert not torch.allclose(told_subset[background], untold_subset[background])
    brain = (slice(None), slice(0, 6), slice(None), slice(0, 6))  # covered by the brain tile alone
    assert torch.allclose(told_subset[brain], untold_subset[brain], atol=1e-5)
