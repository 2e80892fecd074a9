"""``score -np 2`` killed with SIGKILL: its scoring workers end with it. They are stopped (SIGSTOP) before the kill,
as a busy worker would be, so that only the signal the kernel sends when ``score`` dies can end them: a worker that
merely notices its closed pipe at its next task would stay. A real process, real signals, small label maps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk
from cli_helpers import process_running

N_CASES, SHAPE = 8, (40, 40, 40)


def _write_labels(folder, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(N_CASES):
        label = (rng.random(SHAPE) > 0.7).astype(np.uint8)  # many small lesions: some work per case
        sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / f"case{i}.nii.gz"))


def _children(pid: int) -> set:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        children.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return children


def _has_scored(pid: int) -> bool:
    """A worker that has run a scoring task has SimpleITK loaded (the task imports it; the worker's start does
    not), so its initializer has run."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "SimpleITK" in f.read()
    except OSError:
        return False


def test_sigkill_of_score_ends_its_scoring_workers(tmp_path):
    _write_labels(tmp_path / "gt", 0)
    _write_labels(tmp_path / "pred", 1)
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    score = subprocess.Popen([exe, "score", str(tmp_path / "gt"), str(tmp_path / "pred"), "--regions", "WT=1",
                              "-np", "2", "-o", str(tmp_path / "out")], env=dict(os.environ, OMP_NUM_THREADS="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers = set()
    try:
        deadline = time.monotonic() + 300
        while len(workers) < 2:
            assert score.poll() is None and time.monotonic() < deadline, score.communicate()
            workers = {p for p in _children(score.pid) if _has_scored(p)}
            time.sleep(0.02)
        score.send_signal(signal.SIGSTOP)  # nothing moves on now: neither score nor its workers
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        score.send_signal(signal.SIGKILL)
        score.wait()
        deadline = time.monotonic() + 15
        while any(process_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in workers if process_running(p)] == [], "scoring workers outlived the killed score"
    finally:
        for pid in workers:  # nothing may be left running (or stopped) after a failure
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
        score.kill()
        score.communicate()
