"""nnU-Net plans written by hand for network unit tests (no planning run needed): the same dicts nnunetv2 2.8.1's
planners write into nnUNetPlans.json, for a PlainConvUNet or a ResidualEncoderUNet of any dimension and patch."""
from __future__ import annotations

from typing import Sequence

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

_NORM = {2: "torch.nn.modules.instancenorm.InstanceNorm2d", 3: "torch.nn.modules.instancenorm.InstanceNorm3d"}
_CONV = {2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}


def make_plans(patch_size: Sequence[int], strides: Sequence[Sequence[int]], features: Sequence[int],
               residual: bool = False, batch_size: int = 2, configuration: str = "test") -> dict:
    """A plans dict with one configuration ``configuration``; ``strides[0]`` is the stem's (all ones)."""
    dim = len(patch_size)
    n_stages = len(strides)
    assert len(features) == n_stages
    kwargs = {
        "n_stages": n_stages, "features_per_stage": list(features), "conv_op": _CONV[dim],
        "kernel_sizes": [[3] * dim] * n_stages, "strides": [list(s) for s in strides],
        "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True, "norm_op": _NORM[dim],
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    if residual:
        kwargs["n_blocks_per_stage"] = [1] * n_stages
        name = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
    else:
        kwargs["n_conv_per_stage"] = [2] * n_stages
        name = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    return {
        "dataset_name": "Dataset999_Test", "plans_name": "TestPlans", "original_median_spacing_after_transp": [1.0] * 3,
        "original_median_shape_after_transp": [64, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {configuration: {
            "data_identifier": "test", "preprocessor_name": "DefaultPreprocessor", "batch_size": batch_size,
            "patch_size": list(patch_size), "median_image_size_in_voxels": list(patch_size),
            "spacing": [1.0] * dim, "normalization_schemes": ["ZScoreNormalization"] * 4,
            "use_mask_for_norm": [True] * 4, "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": {},
            "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {}, "batch_dice": False,
            "architecture": {"network_class_name": name, "arch_kwargs": kwargs,
                             "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
        "experiment_planner_used": "hand-written", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
    }


def make_managers(patch_size, strides, features, residual: bool = False):
    """(PlansManager, ConfigurationManager) for :func:`make_plans`."""
    plans_manager = PlansManager(make_plans(patch_size, strides, features, residual))
    return plans_manager, plans_manager.get_configuration("test")


def tiny_3d(residual: bool = False):
    """A non-cubic 3d U-Net with a stage at 1/8 resolution: patch 24x32x16, 4 stages (1, 1/2, 1/4, 1/8)."""
    return make_managers([24, 32, 16], [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], [8, 16, 32, 32], residual)


def tiny_2d():
    """A 2d U-Net: patch 32x48, 5 stages down to 1/16."""
    return make_managers([32, 48], [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2]], [8, 16, 32, 32, 32])
