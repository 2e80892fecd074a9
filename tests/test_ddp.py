"""DDP readiness: one train_step under torch.distributed (gloo, 2 CPU processes) with the network DDP-wrapped."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, nnunet_root, result_dir):
    import sys
    sys.path.insert(0, os.path.dirname(__file__))
    from nnunet_missingmod.training.dropout import ModalityDropoutTrainer
    from trainer_helpers import make_batch, make_trainer
    torch.manual_seed(0)  # identical initial weights; DDP also broadcasts rank 0's at wrap time
    torch.set_num_threads(1)
    # nnU-Net forces cuda once a process group exists, so the trainer is built first and wrapped by hand, as
    # nnUNetTrainer.initialize does on GPUs (SyncBatchNorm conversion is a no-op for the InstanceNorm U-Net).
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer)
    trainer.subset_generator.manual_seed(1000 + rank)  # ranks draw different subsets
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    trainer.is_ddp, trainer.local_rank = True, rank
    trainer.network = DDP(trainer.network)
    trainer.loss = trainer._build_loss()  # as initialize() does after wrapping: DDP-aware Dice, no zero DS weight
    batch = make_batch(trainer, batch_size=2, seed=rank)  # different data per rank
    masks = trainer.sample_channel_masks(2)
    trainer.subset_generator.manual_seed(1000 + rank)
    before = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
    trainer.train_step(batch)
    after = torch.cat([p.detach().flatten() for p in trainer.network.parameters()])
    torch.save({"before": before, "after": after, "masks": masks}, os.path.join(result_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


def test_one_ddp_train_step_keeps_ranks_in_sync(nnunet_root, tiny_preprocessed, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), nnunet_root, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(r0["before"], r1["before"])
    assert not torch.equal(r0["before"], r0["after"])  # the step changed the weights
    assert torch.equal(r0["after"], r1["after"])  # gradients were averaged: identical weights on both ranks
    assert not torch.equal(r0["masks"], r1["masks"])  # while each rank trained on its own subsets
