"""Our trainers on nnU-Net's residual-encoder presets (``-p nnUNetResEncUNet*Plans``): the same tiny dataset with
its 3d_fullres configuration switched to ResidualEncoderUNet, as those planners write it."""
import copy

import pytest
import torch

from conftest import plans_and_dataset_json
from nnunet_missingmod.training.naming import trainer_registry
from trainer_helpers import make_batch

RESENC = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"  # as nnU-Net's ResEnc planners write it


def _resenc_plans(nnunet_root):
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    kwargs = architecture["arch_kwargs"]
    n_stages = kwargs["n_stages"]
    kwargs["n_blocks_per_stage"] = [1] + [2] * (n_stages - 1)
    del kwargs["n_conv_per_stage"]
    architecture["network_class_name"] = RESENC
    return plans, dataset_json


@pytest.mark.parametrize("name", ["ModalityDropoutTrainer", "MSTKDTrainer_small", "CCSDTrainer_small"])
def test_trainer_steps_and_exports_on_residual_encoder_plans(nnunet_root, tiny_preprocessed, tmp_path, name):
    plans, dataset_json = _resenc_plans(nnunet_root)
    cls = trainer_registry()[name]
    trainer = cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    encoder = getattr(trainer.network, "shared_encoder", None) or trainer.network.encoder
    assert type(encoder).__name__ == "ResidualEncoder"
    out = trainer.train_step(make_batch(trainer))
    assert torch.isfinite(torch.as_tensor(out["loss"]))
    trainer.save_checkpoint(str(tmp_path / "c.pth"))
    inference = cls.build_network_architecture(trainer.plans_manager, trainer.configuration_manager,
                                               trainer.num_input_channels,
                                               trainer.label_manager.num_segmentation_heads,
                                               enable_deep_supervision=False)
    inference.load_state_dict(torch.load(tmp_path / "c.pth", weights_only=False)["network_weights"], strict=True)
