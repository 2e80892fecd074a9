"""``nnUNetv2_train`` killed mid-epoch (SIGKILL) and resumed with ``--c`` continues every method family exactly
where it was: the resumed run's final checkpoint (network, teacher, discriminator, optimisers, subset sampler,
logged losses of every epoch) equals an uninterrupted run's, bit for bit on the CPU. Real processes and signals; the
trainers (``fault_trainers/``) are our trainers made reproducible and killable at a known step."""
from __future__ import annotations

import math
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import bin_dir, run_command
from trainer_helpers import fault_env, fold_folder, train_command

PAUSE_AT_ENV = "nnUNet_missingmod_test_pause_at"
PAUSED_FILE_ENV = "nnUNet_missingmod_test_paused"
TIMESTAMPS = ("epoch_start_timestamps", "epoch_end_timestamps")  # wall-clock times: the one thing that differs


def kill_at(nnunet_root: Path, results: Path, trainer: str, epoch: int, iteration: int, timeout_s: float = 1200):
    """Run ``nnUNetv2_train`` until it is about to take training step ``iteration`` of ``epoch``, then SIGKILL it."""
    paused = results / "paused"
    env = fault_env(nnunet_root, results, **{PAUSE_AT_ENV: f"{epoch}:{iteration}", PAUSED_FILE_ENV: str(paused)})
    command = train_command(trainer)
    with open(results / "killed_run.log", "w") as log:
        process = subprocess.Popen([str(bin_dir() / command[0]), *map(str, command[1:])], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while not paused.exists():
            assert process.poll() is None, f"it ended before the pause:\n{(results / 'killed_run.log').read_text()}"
            assert time.monotonic() < deadline, "the run did not reach the pause in time"
            time.sleep(0.2)
    finally:
        process.kill()  # SIGKILL: nothing of ours or nnU-Net's runs any more
        process.wait()
    assert process.returncode == -signal.SIGKILL


def assert_same(a, b, where: str = "checkpoint") -> None:
    """``a`` equals ``b`` exactly: tensors by ``torch.equal``, floats bit for bit (NaN equals NaN), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            if key not in TIMESTAMPS:
                assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b, equal_nan=True), where
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def kill_resume_and_compare(nnunet_root: Path, tmp_path: Path, trainer: str, kill_epoch: int = 1):
    """An uninterrupted run, and a run SIGKILLed after the first step of ``kill_epoch`` and resumed with ``--c``;
    asserts that both final checkpoints are equal. Returns the checkpoint the resume started from and the resumed
    run's final one."""
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference.mkdir()
    killed.mkdir()
    run_command(train_command(trainer), fault_env(nnunet_root, reference))

    kill_at(nnunet_root, killed, trainer, kill_epoch, iteration=1)
    folder = fold_folder(killed, trainer)
    assert not (folder / "checkpoint_final.pth").exists()
    latest = torch.load(folder / "checkpoint_latest.pth", weights_only=False)
    assert latest["current_epoch"] == kill_epoch  # written at the end of the epoch before the kill
    resumed_log = run_command(train_command(trainer, "--c"), fault_env(nnunet_root, killed)).stdout
    assert f"Epoch {kill_epoch}" in resumed_log and f"Epoch {kill_epoch - 1}\n" not in resumed_log

    expected = torch.load(fold_folder(reference, trainer) / "checkpoint_final.pth", weights_only=False)
    resumed = torch.load(folder / "checkpoint_final.pth", weights_only=False)
    losses = expected["logging"]["train_losses"]
    assert len(losses) == expected["current_epoch"] and len(set(losses)) == len(losses)  # every epoch trained
    assert_same(resumed, expected)
    return latest, resumed


@pytest.mark.slow
def test_killed_dropout_run_resumes_with_the_subset_sampler_where_it_was(nnunet_root, tiny_preprocessed, tmp_path):
    _, resumed = kill_resume_and_compare(nnunet_root, tmp_path, "KillableDropoutTrainer")
    assert resumed["missingmod_config"]["subset_sampling"] == "cardinality"


@pytest.mark.slow
def test_killed_mstkd_run_resumes_teacher_discriminator_and_their_optimisers(nnunet_root, tiny_preprocessed,
                                                                             tmp_path):
    _, resumed = kill_resume_and_compare(nnunet_root, tmp_path, "KillableMSTKDTrainer")
    extra = resumed["missingmod_extra"]
    assert sorted(extra["modules"]) == ["discriminator", "teacher"] and list(extra["optimizers"]) == ["discriminator"]
    assert extra["optimizers"]["discriminator"]["state"]  # Adam's moments, compared above


@pytest.mark.slow
def test_killed_ccsd_run_resumes_where_it_was(nnunet_root, tiny_preprocessed, tmp_path):
    _, resumed = kill_resume_and_compare(nnunet_root, tmp_path, "KillableCCSDTrainer")
    assert len(resumed["logging"]["train_level"]) == 2  # the hierarchy level, drawn from the subset sampler


@pytest.mark.slow
def test_killed_demoseg_run_resumes_where_it_was(nnunet_root, tiny_preprocessed, tmp_path):
    _, resumed = kill_resume_and_compare(nnunet_root, tmp_path, "KillableDeMoSegTrainer")
    assert len(resumed["logging"]["train_alignment"]) == 2


@pytest.mark.slow
def test_killed_two_phase_run_in_phase_2_resumes_with_its_teacher_snapshot(nnunet_root, tiny_preprocessed, tmp_path):
    latest, resumed = kill_resume_and_compare(nnunet_root, tmp_path, "KillableTwoPhaseDistillTrainer", kill_epoch=2)
    assert latest["missingmod_extra"]["method"]["teacher_snapshot_epoch"] == 1  # killed after the switch: phase 2
    assert resumed["missingmod_extra"]["method"]["teacher_snapshot_epoch"] == 1  # kept, not taken again at the resume
    assert resumed["logging"]["train_distill_kl"][0] == 0 < resumed["logging"]["train_distill_kl"][2]
