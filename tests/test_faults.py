"""faults: SIGTERM raised as :class:`Terminated` inside ``sigterm_raises`` (and the previous handler back after it),
and running out of GPU memory recognised and named with its fixes."""
import os
import signal

import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.faults import (
    OutOfMemory, Terminated, is_out_of_memory, prediction_out_of_memory_message, sigterm_raises,
    training_out_of_memory_message)


def test_sigterm_inside_the_block_raises_terminated_and_the_handler_is_restored_after_it():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is before
    assert Terminated.exit_code == 143 and not issubclass(Terminated, Exception)  # per-case handlers let it through


def test_out_of_memory_is_recognised_in_both_spellings_and_nothing_else():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert issubclass(OutOfMemory, MissingModError)


def test_out_of_memory_messages_name_what_ran_and_the_fixes():
    prediction = prediction_out_of_memory_message("case_0", (128, 128, 128), "cuda:0")
    assert prediction.startswith("case case_0: cuda:0 ran out of memory") and "patch 128x128x128" in prediction
    assert "--not_on_device" in prediction and "-device cpu" in prediction
    training = training_out_of_memory_message((96, 96, 96), 2, "137", "3d_fullres", extra_models="a teacher")
    assert "patch 96x96x96, batch size 2 together with a teacher" in training
    assert "nnUNetv2_plan_experiment -d 137 -gpu_memory_target" in training and "-c 3d_fullres" in training
