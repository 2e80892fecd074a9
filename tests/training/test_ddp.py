"""DDP readiness: one train_step under torch.distributed (gloo, 2 CPU processes) with every module the base owns
wrapped by the base's own ``wrap_modules_for_ddp`` (what ``initialize()`` calls on GPUs)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trainer_class(name):
    if name == "TeacherDiscriminatorTrainer":
        from trainer_helpers import TeacherDiscriminatorTrainer
        return TeacherDiscriminatorTrainer
    from nnunet_missingmod.training.naming import trainer_registry
    return trainer_registry()[name]


def _worker(rank, world_size, port, nnunet_root, result_dir, trainer_names, stock_checkpoint):
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # tests/, for trainer_helpers
    from trainer_helpers import make_batch, make_trainer, module_parameters
    torch.set_num_threads(1)
    # nnU-Net forces cuda once a process group exists, so every trainer is built first (one process group for all:
    # each spawn costs both ranks a torch import); then the base class wraps every module with the same method
    # initialize() uses under DDP.
    trainers = {}
    for name in trainer_names:
        torch.manual_seed(0)  # identical initial weights; DDP also broadcasts rank 0's at wrap time
        if name == "RobustifyTrainer":  # its teacher and start: a stock checkpoint
            os.environ["nnUNet_missingmod_teacher"] = stock_checkpoint
        trainers[name] = make_trainer(nnunet_root, _trainer_class(name))
        os.environ.pop("nnUNet_missingmod_teacher", None)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for name, trainer in trainers.items():
        trainer.subset_generator.manual_seed(1000 + rank)  # ranks draw different subsets
        trainer.is_ddp, trainer.local_rank = True, rank
        trainer.wrap_modules_for_ddp()
        if getattr(getattr(trainer, "teacher", None), "source", None) == "snapshot":
            # phase 2: subsets are drawn and the frozen snapshot distils
            trainer.current_epoch = trainer.teacher_switch_epoch()
            trainer.take_teacher_snapshot()
        modules = {"network": trainer.network, **trainer.extra_modules}
        wrapped = {module: isinstance(m, DDP) for module, m in modules.items()
                   if module == "network" or trainer.extra_specs[module].trainable}
        batch = make_batch(trainer, batch_size=2, seed=rank)  # different data per rank
        masks = trainer.subset_masks[trainer.sample_subset_indices(2)]
        trainer.subset_generator.manual_seed(1000 + rank)
        before = {module: module_parameters(m) for module, m in modules.items()}
        trainer.train_step(batch)
        after = {module: module_parameters(m) for module, m in modules.items()}
        torch.save({"before": before, "after": after, "masks": masks, "wrapped": wrapped},
                   os.path.join(result_dir, f"{name}.rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


MODULES = {"TeacherDiscriminatorTrainer": {"network", "teacher", "discriminator"},
           "MSTKDTrainer_small": {"network", "teacher", "discriminator"},
           "CCSDTrainer_small": {"network"},
           "DeMoSegTrainer_small": {"network"},
           "TwoPhaseDistillTrainer": {"network", "teacher"},
           "TwoPhaseDistillTrainer_presence": {"network", "teacher"},  # per-pattern tables: rows without gradient
           "TwoPhaseDistillTrainer_emaTeacher": {"network", "teacher"},
           "RobustifyTrainer": {"network", "teacher"}}
FROZEN = {"TwoPhaseDistillTrainer": {"teacher"}, "TwoPhaseDistillTrainer_presence": {"teacher"},
          "TwoPhaseDistillTrainer_emaTeacher": {"teacher"}, "RobustifyTrainer": {"teacher"}}
MEAN_TEACHER = {"TwoPhaseDistillTrainer_emaTeacher": {"teacher"}}  # frozen (not wrapped), yet moved by the average


@pytest.fixture(scope="module")
def ddp_steps(nnunet_root, tiny_preprocessed, tmp_path_factory):
    """One DDP step of every trainer in MODULES, both ranks' parameters before and after, per trainer."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from trainer_helpers import make_trainer
    result_dir = tmp_path_factory.mktemp("ddp")
    stock_checkpoint = str(result_dir / "stock.pth")
    make_trainer(nnunet_root, nnUNetTrainer).save_checkpoint(stock_checkpoint)
    mp.spawn(_worker, args=(2, _free_port(), nnunet_root, str(result_dir), sorted(MODULES), stock_checkpoint),
             nprocs=2, join=True)
    return result_dir


@pytest.mark.parametrize("trainer_name", sorted(MODULES))
def test_one_ddp_train_step_keeps_every_module_in_sync(ddp_steps, trainer_name):
    r0, r1 = (torch.load(ddp_steps / f"{trainer_name}.rank{r}.pt") for r in (0, 1))
    assert set(r0["after"]) == MODULES[trainer_name]
    assert all(r0["wrapped"].values())  # every trainable module was DDP-wrapped by the base class
    assert set(r0["wrapped"]) == MODULES[trainer_name] - FROZEN.get(trainer_name, set())  # a frozen one is not
    for name in r0["after"]:
        assert torch.equal(r0["before"][name], r1["before"][name]), name
        changed = not torch.equal(r0["before"][name], r0["after"][name])
        moved = name not in FROZEN.get(trainer_name, set()) or name in MEAN_TEACHER.get(trainer_name, set())
        assert changed == moved, name  # the step changed the trainable ones (and a mean teacher)
        assert torch.equal(r0["after"][name], r1["after"][name]), name  # averaged gradients: identical on ranks
    if trainer_name != "CCSDTrainer_small":  # CCSD feeds every sequence and draws its students per step
        assert not torch.equal(r0["masks"], r1["masks"])  # while each rank trained on its own subsets
