"""Build a real trainer on the tiny preprocessed dataset and a batch like nnU-Net's data loader yields."""
import copy

import torch

from conftest import plans_and_dataset_json


def make_trainer(nnunet_root, trainer_class, fold=0):
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    trainer = trainer_class(plans, "3d_fullres", fold, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def make_batch(trainer, batch_size=2, seed=0):
    """Random normalised data and region targets at every deep-supervision scale."""
    g = torch.Generator().manual_seed(seed)
    patch = trainer.configuration_manager.patch_size
    n_channels = len(trainer.channel_modalities)
    data = torch.randn(batch_size, n_channels, *patch, generator=g)
    labels = torch.randint(0, 4, (batch_size, 1, *patch), generator=g)
    regions = torch.cat([labels >= 1, labels >= 2, labels == 3], dim=1)
    targets = []
    for scale in trainer._get_deep_supervision_scales():
        size = [round(p * s) for p, s in zip(patch, scale)]
        targets.append(torch.nn.functional.interpolate(regions.float(), size=size, mode="nearest-exact").bool())
    return {"data": data, "target": targets, "keys": [f"case{i}" for i in range(batch_size)]}
