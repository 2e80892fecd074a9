"""How a run ends when it must: SIGTERM turned into an exception (:class:`Terminated`) that the writers'
clean-up code sees, worker processes that end with the process that started them (:func:`die_with_parent`), and
running out of GPU memory turned into one message with the fixes (:class:`OutOfMemory`)."""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from nnunet_missingmod.errors import MissingModError


# ------------------------------------------------------------------------------------------------------ signals
class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM (a scheduler's time limit, ``kill``). A
    ``BaseException``, so that per-case ``except Exception`` handlers let it through, while ``finally`` blocks
    and :func:`~nnunet_missingmod.atomic_io.atomic_output` still remove what was being written."""

    exit_code = 128 + signal.SIGTERM


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside the block, SIGTERM raises :class:`Terminated` (Python's default would end the process at once and run
    no clean-up). The previous handler is restored afterwards."""
    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        quiet_lost_hand_overs()
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def quiet_lost_hand_overs() -> None:
    """Let multiprocessing's ``resource_sharer`` thread, which hands a tensor's file descriptor to another process,
    lose its connection without a traceback: when one side of a worker pipeline ends (SIGTERM, or a worker dying with
    its parent) the other side's hand-over is cut mid-way, which is expected and not an error to print. That thread
    reports through ``sys.excepthook``; other threads through ``threading.excepthook``: both are wrapped, and every
    other exception is reported as before."""
    if getattr(sys.excepthook, "quiet_lost_hand_overs", False):
        return
    previous_sys, previous_threading = sys.excepthook, threading.excepthook

    def sys_hook(exc_type, exc_value, exc_traceback) -> None:
        if not _is_lost_hand_over(exc_type, exc_traceback):
            previous_sys(exc_type, exc_value, exc_traceback)

    def threading_hook(args) -> None:
        if not _is_lost_hand_over(args.exc_type, args.exc_traceback):
            previous_threading(args)

    sys_hook.quiet_lost_hand_overs = threading_hook.quiet_lost_hand_overs = True
    sys.excepthook, threading.excepthook = sys_hook, threading_hook


def _is_lost_hand_over(exc_type, exc_traceback) -> bool:
    if not issubclass(exc_type, (ConnectionError, EOFError)):
        return False
    tb = exc_traceback
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(os.path.join("multiprocessing", "resource_sharer.py")):
            return True
        tb = tb.tb_next
    return False


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(signum: int = signal.SIGKILL, parent_pid: Optional[int] = None) -> None:
    """In a worker process: receive ``signum`` when the process that started it ends, for any reason (a SIGKILL of
    ``predict`` included), instead of running on and holding its memory, its GPU and its output folder.

    On Linux the kernel sends it (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread checks every second
    whether the parent still runs. ``parent_pid`` (default: multiprocessing's parent, else ``os.getppid()``) also
    catches a parent that ended before this was called. SIGTERM lets a worker clean up first (its handler must end
    it); anything still running 10 s after the signal is ended with ``os._exit``."""
    quiet_lost_hand_overs()
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
    kernel_watches = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            kernel_watches = libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
        except (OSError, AttributeError):
            kernel_watches = False
    if os.getppid() != parent_pid:  # the parent ended before the kernel watched it
        _end_self(signum)
    if not kernel_watches:
        threading.Thread(target=_watch_parent, args=(parent_pid, signum), name="die_with_parent", daemon=True).start()


def _watch_parent(parent_pid: int, signum: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    _end_self(signum)


def _end_self(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(10)  # a handler (SIGTERM) is cleaning up; if it did not end the process, end it now
    os._exit(128 + signum)


# ------------------------------------------------------------------------------------------------ out of memory
class OutOfMemory(MissingModError):
    """The GPU ran out of memory; the message says what ran and the fixes, in the order to try them."""


def is_out_of_memory(error: BaseException) -> bool:
    """``torch.cuda.OutOfMemoryError`` (or the ``RuntimeError`` older drivers and MPS raise for the same)."""
    import torch
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower())


def prediction_out_of_memory_message(case: str, patch_size: Sequence[int], device: str) -> str:
    """The one message for running out of GPU memory in nnU-Net's sliding window (one patch per forward pass)."""
    patch = "x".join(map(str, patch_size))
    return (f"case {case}: {device} ran out of memory in the sliding-window prediction (patch {patch}, batch size 1 "
            f"patch per forward pass). Fixes, in order: (1) --not_on_device keeps the logits of the whole case in "
            f"CPU memory (nnU-Net's perform_everything_on_device=False); (2) -device cpu (slow, but needs no GPU "
            f"memory); (3) a model trained with a smaller patch (see nnUNetv2_plan_experiment -gpu_memory_target). "
            f"A smaller -step_size does not help: it changes how many patches are predicted, not their size")


def training_out_of_memory_message(patch_size: Sequence[int], batch_size: int, dataset: str, configuration: str,
                                   plans: str = "nnUNetPlans", extra_models: str = "") -> str:
    """The one message for running out of GPU memory in a training step (for the trainers' ``train_step``).
    ``extra_models``: what else is on the GPU besides the student (e.g. "a teacher and a discriminator")."""
    patch = "x".join(map(str, patch_size))
    also = f" together with {extra_models}" if extra_models else ""
    return (f"the GPU ran out of memory in a training step (patch {patch}, batch size {batch_size}{also}). Fixes, in "
            f"order: (1) plans for a smaller GPU: nnUNetv2_plan_experiment -d {dataset} -gpu_memory_target GB "
            f"-overwrite_plans_name {plans}_smaller, then nnUNetv2_preprocess -d {dataset} -plans_name "
            f"{plans}_smaller -c {configuration} and nnUNetv2_train ... -p {plans}_smaller (a smaller patch or "
            f"batch); (2) close other processes on the GPU (nvidia-smi lists them); (3) a GPU with more memory")
