"""faults: SIGTERM raised as :class:`Terminated` inside ``sigterm_raises`` (and the previous handler back after it),
and running out of GPU memory recognised and named with its fixes."""
import os
import signal
import sys

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


def test_a_lost_file_descriptor_hand_over_is_quiet_and_other_thread_errors_are_still_reported(monkeypatch, capsys):
    import threading

    from nnunet_missingmod.faults import quiet_lost_hand_overs
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    quiet_lost_hand_overs()
    # code whose frames name multiprocessing's resource_sharer.py; its _serve thread reports through sys.excepthook
    sharer = os.path.join(os.path.dirname(threading.__file__), "multiprocessing", "resource_sharer.py")
    namespace = {"sys": sys}
    exec(compile("def serve():\n"
                 "    try:\n"
                 "        raise ConnectionResetError(104, 'Connection reset by peer')\n"
                 "    except Exception:\n"
                 "        sys.excepthook(*sys.exc_info())\n"
                 "def thread_serve():\n"
                 "    raise ConnectionResetError(104, 'reset in a thread of the sharer')\n", sharer, "exec"), namespace)

    def elsewhere():
        raise ConnectionResetError(104, "a connection of our own")

    for target in (namespace["serve"], namespace["thread_serve"], elsewhere):
        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
    try:
        raise ValueError("an error of the main thread")
    except ValueError:
        sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert "a connection of our own" in err and "an error of the main thread" in err
    assert "Connection reset by peer" not in err and "reset in a thread of the sharer" not in err
    wrapped = sys.excepthook
    quiet_lost_hand_overs()  # installing it twice wraps nothing twice
    assert sys.excepthook is wrapped
