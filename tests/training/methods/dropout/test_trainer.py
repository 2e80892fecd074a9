"""The dropout baselines (methods/dropout/trainer.py) on the real plans of the tiny dataset: stock training on every
sequence, uniform dropout over the 15 subsets, and ShaSpec's cardinality sampling."""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_missingmod.modalities import SUBSETS
from nnunet_missingmod.training.methods.dropout.ablations import ModalityDropoutTrainer_cardinality_presence
from nnunet_missingmod.training.methods.dropout.presence import PresenceConditionedNorm
from nnunet_missingmod.training.methods.dropout.trainer import (
    FullSetTrainer, ModalityDropoutTrainer, ModalityDropoutTrainer_cardinality)
from trainer_helpers import make_batch, make_trainer

FULL_SET = len(SUBSETS) - 1


def _subset_shares(trainer, n=30000):
    """Share of each subset among ``n`` draws, as ``train_step`` draws them."""
    return torch.bincount(trainer.sample_subset_indices(n).cpu(), minlength=len(SUBSETS)).double() / n


def test_full_set_trainer_feeds_the_network_exactly_what_nnunet_feeds_it(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, FullSetTrainer)
    assert FullSetTrainer.sampling.full_set_probability == 1.0
    assert trainer.trainable_subsets() == [SUBSETS[FULL_SET].name]
    seen = []
    trainer.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    batch = make_batch(trainer, batch_size=4)
    trainer.train_step(batch)
    assert torch.equal(seen[0], batch["data"])
    assert type(trainer.network) is type(make_trainer(nnunet_root, nnUNetTrainer).network)  # stock network


def test_modality_dropout_draws_the_15_subsets_uniformly(nnunet_root, tiny_preprocessed):
    shares = _subset_shares(make_trainer(nnunet_root, ModalityDropoutTrainer))
    assert torch.allclose(shares, torch.full((len(SUBSETS),), 1 / 15, dtype=torch.float64), atol=0.01)


def test_cardinality_dropout_draws_the_number_of_sequences_uniformly(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer_cardinality)
    assert trainer.sample_subset_indices(2).device == trainer.device
    shares = _subset_shares(trainer)
    for k in range(1, 5):
        share = sum(float(shares[i]) for i, s in enumerate(SUBSETS) if s.cardinality == k)
        assert abs(share - 0.25) < 0.015, k  # uniform over subsets would give 4/15, 6/15, 4/15, 1/15


def test_the_presence_ablation_conditions_the_planned_network_and_keeps_cardinality_sampling(nnunet_root,
                                                                                            tiny_preprocessed):
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer_cardinality_presence)
    assert trainer.sampling.strategy == "cardinality"
    norms = [m for m in trainer.network.modules() if isinstance(m, PresenceConditionedNorm)]
    assert norms and len(norms) == len(trainer.network.presence_norms)
    plain = make_trainer(nnunet_root, ModalityDropoutTrainer_cardinality).network.state_dict()
    own = trainer.network.state_dict()
    added = set(own) - set(plain)
    assert set(plain) < set(own) and all(k.endswith(("presence_scale", "presence_shift")) for k in added)
