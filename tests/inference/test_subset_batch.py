"""Subsets batched per tile (``evaluate --subset-batch K``): each tile's K masked copies go through the network as
one batch and give the segmentations of one sliding window per subset. A batched convolution may sum in another
order, so logits may differ by float rounding and a segmentation only where class probabilities tie within it.

Real nnU-Net predictor and real ``evaluate`` on the untrained tiny network of conftest's ``model_folder`` (8^3
patches); the presence-aware networks (presence-conditioned norms, CCSD) with random parameters, on a volume whose
last tiles are all zero: there only the told per-sample mask tells the subsets apart (an untold network reads a zero
tile as complete), so a batch told the wrong masks, or none, would give other logits."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import CHANNEL_NAMES, LABELS, model_folder_plans
from presence_helpers import record_presence

from nnunet_missingmod.cli import main
from nnunet_missingmod.modalities import MODALITIES, SUBSETS

# Probability. nnU-Net sums the Gaussian-weighted tiles in fp16 (weights up to 10, overlapping tiles): one ulp of
# that sum is up to ~0.02 of a logit, through the sigmoid's or softmax's slope (<= 1/4)
TIE = 1e-2
REGIONS_JSON = {"channel_names": CHANNEL_NAMES, "labels": LABELS, "regions_class_order": [1, 2, 3],
                "numTraining": 1, "file_ending": ".nii.gz"}
LABELS_JSON = {"channel_names": CHANNEL_NAMES, "numTraining": 1, "file_ending": ".nii.gz",
               "labels": {"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tiles: a second thread only waits for the first on this shared machine (its cores are busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tie_margin(label_manager, probabilities: torch.Tensor) -> torch.Tensor:
    """Per voxel, how far the decision is from a tie: regions, the smallest |p - 1/2|; labels, the top two
    probabilities' difference."""
    if label_manager.has_regions:
        return (probabilities - 0.5).abs().min(0).values
    top = probabilities.topk(2, dim=0).values
    return top[0] - top[1]


def compare_segmentations(label_manager, alone: torch.Tensor, batched: torch.Tensor):
    """(voxels whose segmentation differs, max probability difference); fails if one of those voxels is no tie."""
    p_alone = label_manager.apply_inference_nonlin(alone.float())
    p_batched = label_manager.apply_inference_nonlin(batched.float())
    differ = (label_manager.convert_probabilities_to_segmentation(p_alone)
              != label_manager.convert_probabilities_to_segmentation(p_batched))
    assert (tie_margin(label_manager, p_alone)[differ] <= TIE).all()
    return int(differ.sum()), float((p_alone - p_batched).abs().max())


def _random_parameters(network, seed=0):
    # nnU-Net's init leaves norms at (1, 0) and the presence tables at zero: presence would change nothing
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return network.eval()


def _presence_network(plans_manager, configuration_manager, n_outputs):
    from nnunet_missingmod.training.methods.dropout.presence import condition_on_presence
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    network = get_network_from_plans(
        configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import, len(MODALITIES), n_outputs, allow_init=True,
        deep_supervision=False)
    return condition_on_presence(network, len(MODALITIES))


def _ccsd_network(plans_manager, configuration_manager, n_outputs):
    from nnunet_missingmod.training.methods.ccsd.network import build_ccsd_network
    return build_ccsd_network(plans_manager, configuration_manager, len(MODALITIES), n_outputs, False)


@pytest.mark.parametrize("network, dataset_json, mirroring", [
    (_presence_network, REGIONS_JSON, True), (_presence_network, LABELS_JSON, False),
    (_ccsd_network, REGIONS_JSON, False)], ids=["presence-regions-mirrored", "presence-labels", "ccsd-regions"])
def test_batched_subsets_equal_one_sliding_window_per_subset(network, dataset_json, mirroring):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    plans_manager = PlansManager(model_folder_plans())
    configuration_manager = plans_manager.get_configuration("3d_fullres")
    n_outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(0)
    net = _random_parameters(network(plans_manager, configuration_manager, n_outputs))
    recorder = record_presence(net)
    predictor = MissingModalityPredictor(use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(net, plans_manager, configuration_manager, [net.state_dict()], dataset_json,
                                    "nnUNetTrainer", (0, 1, 2))
    data = torch.randn((len(MODALITIES), 12, 14, 16), generator=torch.Generator().manual_seed(1))
    data[..., 8:] = 0  # the tiles at z 8..15 are all zero
    alone = [predictor.predict_preprocessed(data, subset) for subset in SUBSETS]
    recorder.told.clear()
    batched = predictor.predict_preprocessed_subsets(data, SUBSETS)
    assert recorder.told == [[list(s.present) for s in SUBSETS], None]  # one (15, 4) mask, then cleared
    assert predictor.label_manager.num_segmentation_heads == n_outputs  # nnU-Net's label manager is back
    differing, max_difference = zip(*(compare_segmentations(predictor.label_manager, a, b)
                                      for a, b in zip(alone, batched)))
    print(f"voxels differing {sum(differing)} of {15 * data[0].numel()}, max probability difference "
          f"{max(max_difference):.2g}")
    assert max(max_difference) <= TIE
    # the zero tiles are told apart only by the told mask: the subsets' logits differ there
    assert not torch.allclose(batched[0][..., 8:].float(), batched[-1][..., 8:].float(), atol=0.1)


def test_batching_is_refused_by_a_module_that_takes_one_mask_per_case(model_folder):
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    predictor = MissingModalityPredictor(device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (0,))
    assert predictor.batches_subsets()
    recorder = record_presence(predictor.network)
    recorder.per_sample_presence = False
    assert not predictor.batches_subsets()
    data = torch.randn((len(MODALITIES), 12, 14, 16), generator=torch.Generator().manual_seed(1))
    predictor.predict_preprocessed_subsets(data, SUBSETS[:2])
    assert recorder.told == [list(SUBSETS[0].present), None, list(SUBSETS[1].present), None]  # one case mask each


def test_a_batch_out_of_memory_is_split_until_it_fits(model_folder):
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    predictor = MissingModalityPredictor(use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (0,))
    batch_sizes = []

    def fits_four(module, args):  # a device with room for 4 copies of a tile
        batch_sizes.append(args[0].shape[0])
        if args[0].shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    predictor.network.register_forward_pre_hook(fits_four)
    data = torch.randn((len(MODALITIES), 12, 14, 16), generator=torch.Generator().manual_seed(1))
    batched = predictor.predict_preprocessed_subsets(data, SUBSETS)
    # 15 fails, then 8 (and nnU-Net's retry with the logits in CPU memory), then 4 + 4; 7 fails, then 4 + 3
    assert sorted(set(batch_sizes)) == [3, 4, 7, 8, 15]
    for subset, logits in zip(SUBSETS, batched):
        alone = predictor.predict_preprocessed(data, subset)
        assert compare_segmentations(predictor.label_manager, alone, logits)[1] <= TIE


def _write_case(images, labels, shape=(12, 12, 12)):
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.uint8)
    label[3:8, 3:8, 2:9] = 1
    label[4:7, 4:7, 4:7] = 3
    for channel in range(len(MODALITIES)):
        image = sitk.GetImageFromArray((rng.normal(100, 20, shape) + 30 * label).astype(np.float32))
        sitk.WriteImage(image, str(images / f"case00_{channel:04d}.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / "case00.nii.gz"))


def _evaluate(images, labels, model, out, subset_batch, *extra):
    code = main(["evaluate", "-i", str(images), "-l", str(labels), "-o", str(out), "-m", str(model), "-f", "0",
                 "-device", "cpu", "-np", "1", "--bootstrap", "10", "--figures", "0", "-npp", "0", "-nps", "0",
                 "--subset-batch", str(subset_batch), *extra])
    assert code == 0
    return {str(p.relative_to(out / "predictions" / "nnUNetTrainer")): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted((out / "predictions").rglob("*.nii.gz"))}


@pytest.mark.parametrize("subset_batch, subsets, tta", [
    (3, "T1;T1ce;FLAIR;T1ce+FLAIR;T2+FLAIR;T1+T1ce+T2+FLAIR", True), (4, "all15", False)],
    ids=["K3-mirrored", "K4-uneven-no-tta"])
def test_evaluate_batched_writes_the_per_subset_segmentations(model_folder, tmp_path, subset_batch, subsets, tta):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _write_case(images, labels)
    extra = ("--subsets", subsets) + (() if tta else ("--disable_tta",))
    per_subset = _evaluate(images, labels, model_folder, tmp_path / "per_subset", 1, *extra)
    batched = _evaluate(images, labels, model_folder, tmp_path / "batched", subset_batch, *extra)
    assert per_subset.keys() == batched.keys()
    assert len(batched) == (15 if subsets == "all15" else len(subsets.split(";")))
    voxels = sum(a.size for a in per_subset.values())
    differing = sum(int((per_subset[k] != batched[k]).sum()) for k in per_subset)
    print(f"--subset-batch {subset_batch}: {differing} of {voxels} voxels differ")
    # The tie rule is checked on logits above; from the files: a rounding flip is rare, while a batch element
    # given another subset's input or mask changes far more (the subsets' own segmentations differ by that much)
    assert differing <= voxels // 1000
    t1, full = per_subset["T1/case00.nii.gz"], per_subset["T1+T1ce+T2+FLAIR/case00.nii.gz"]
    assert (t1 != full).sum() > t1.size // 1000 * len(per_subset)


def test_a_subset_batch_below_one_is_one_clear_error(model_folder, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    _write_case(images, labels)
    code = main(["evaluate", "-i", str(images), "-l", str(labels), "-o", str(tmp_path / "out"), "-m", str(model_folder),
                 "-f", "0", "-device", "cpu", "--subset-batch", "0"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "nnunet-missingmod evaluate: error: --subset-batch must be 1 (one sliding window per subset) or more, got 0"]
    assert not (tmp_path / "out").exists()
