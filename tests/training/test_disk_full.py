"""A full disk while training: a checkpoint that does not fit ends the run with one message naming the file, the
free space and what is needed, exit code 2 and no traceback; the earlier checkpoint of that name stays as it was and
no partial file is left. On a real small file system (a tmpfs; skipped where mounting is not allowed)."""
from __future__ import annotations

import os
import re

import pytest
import torch

from fs_helpers import fill, small_filesystem
from nnunet_missingmod.atomic_io import DiskFullError
from nnunet_missingmod.training.base import TrainingDiskFull
from nnunet_missingmod.training.naming import trainer_registry
from nnunet_missingmod.training.nnunet_copies import write_checkpoint
from trainer_helpers import make_trainer

EARLIER = b"the checkpoint of an earlier epoch"


def test_torch_save_on_a_full_disk_is_a_disk_full_error_and_keeps_the_earlier_file(tmp_path):
    # torch's zip writer says "unexpected pos ..." without the OSError behind it
    with small_filesystem(tmp_path / "small", size_kb=256) as small:
        target = small / "checkpoint_latest.pth"
        target.write_bytes(EARLIER)
        fill(small)
        with pytest.raises(DiskFullError, match=re.escape(f"disk full while writing {target}: 0 B free on {small}, "
                                                          f"at least ") + ".* needed; the earlier file is kept"):
            write_checkpoint({"weights": torch.zeros(100_000)}, str(target))
        assert target.read_bytes() == EARLIER
        assert sorted(os.listdir(small)) == ["checkpoint_latest.pth", "filler"]


def test_nnunetv2_train_ends_with_one_message_when_a_checkpoint_does_not_fit(nnunet_root, tiny_preprocessed,
                                                                             tmp_path, monkeypatch, capsys):
    with small_filesystem(tmp_path / "results", size_kb=1024) as results:  # the logs fit, a checkpoint does not
        monkeypatch.setenv("nnUNet_results", str(results))
        trainer = make_trainer(nnunet_root, trainer_registry()["ModalityDropoutTrainer_debug"])
        best = os.path.join(trainer.output_folder, "checkpoint_best.pth")
        with open(best, "wb") as f:
            f.write(EARLIER)
        capsys.readouterr()
        with pytest.raises(TrainingDiskFull) as stopped:  # what nnUNetv2_train calls
            trainer.run_training()
        assert stopped.value.code == 2
        message = str(stopped.value)
        assert re.fullmatch(re.escape(f"disk full while writing {best}: ") + r"\d+ B free on " +
                            re.escape(f"{trainer.output_folder}, at least ") + r"[\d.]+ [KM]B needed; the earlier file "
                            r"is kept\. Free some space \(or write elsewhere\) and run again: the same nnUNetv2_train "
                            r"command with --c continues from the last checkpoint", message), message
        assert capsys.readouterr().err == f"nnUNetv2_train: error: {message}\n"
        with open(best, "rb") as f:
            assert f.read() == EARLIER
        assert not [n for n in os.listdir(trainer.output_folder) if n.startswith(".")]
