"""Keeping nnU-Net's own terminal output (trainer search, plans, per-step prints, its warnings and inner progress
bars) in a log file, so that ``predict`` and ``evaluate`` show only their own progress and per-case lines."""
from __future__ import annotations

import datetime
import os
import sys
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Iterator, Optional, Sequence, Tuple

from nnunet_missingmod.atomic_io import claim_folder


def start_log(output_folder: str, command: str, verbose: bool, part: Optional[Tuple[int, int]] = None) \
        -> Optional[str]:
    """Claim ``output_folder`` for this run (:func:`~nnunet_missingmod.atomic_io.claim_folder`; ``part``:
    ``(part_id, num_parts)`` of a ``-num_parts`` split, which share it) and return ``OUTPUT/<command>.log`` with a
    header line for this run appended, or ``None`` when ``verbose`` (nnU-Net's output stays on the terminal).
    Appended, not replaced, so that ``-num_parts`` calls sharing a folder keep each other's messages.

    ``predict`` and ``evaluate`` start here before they write anything, so this is where both take the lock."""
    claim_folder(output_folder, command, part)
    if verbose:
        return None
    path = os.path.join(output_folder, f"{command}.log")
    with open(path, "a", encoding="utf-8") as log:
        log.write(f"== {datetime.datetime.now().isoformat(timespec='seconds')} pid {os.getpid()}: "
                  f"{os.path.basename(sys.argv[0])} {' '.join(_quoted(sys.argv[1:]))}\n")
    return path


def _quoted(words: Sequence[str]) -> Iterator[str]:
    for word in words:
        yield word if word and all(c.isalnum() or c in "-_./=:+," for c in word) else repr(word)


@contextmanager
def nnunet_output_to(log_path: Optional[str]) -> Iterator[None]:
    """Inside the block, everything written to ``sys.stdout`` and ``sys.stderr`` (nnU-Net's ``print`` calls,
    Python warnings, tqdm bars created inside) is appended to ``log_path``; ``None`` leaves the terminal alone."""
    if log_path is None:
        yield
        return
    with open(log_path, "a", encoding="utf-8") as log, redirect_stdout(log), redirect_stderr(log):
        yield
