"""``predict`` killed with SIGKILL while its background workers run (issue 32): no worker outlives it, and the rerun
with ``--continue_prediction`` is not blocked by the lock of the killed run and finishes identically."""
from __future__ import annotations

import os
import signal
import time

from cli_helpers import process_running, start_predict, wait_for, write_predict_cases

N_CASES = 6


def _descendants(pid: int) -> set:
    """The processes started by ``pid`` (and by them ...), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = {p for p, pp in parents.items() if pp == parent and p not in found}
        found |= children
        todo.extend(children)
    return found


def _segmentations(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.nii.gz"))}


def test_sigkill_ends_the_workers_and_continue_prediction_is_not_blocked(tmp_path, model_folder):  # noqa: F811
    inputs = tmp_path / "in"
    write_predict_cases(inputs, N_CASES)
    reference = start_predict(inputs, tmp_path / "reference", model_folder)
    assert reference.returncode == 0, reference.stderr_text

    out = tmp_path / "out"
    first = start_predict(inputs, out, model_folder, "-npp", "2", "-nps", "2", wait=False)
    workers = set()
    try:
        wait_for(lambda: list(out.glob("*.modalities.json")) or list(out.glob("*.nii.gz")), first)
        workers = _descendants(first.pid)
        assert len(workers) >= 3, "predict runs without its background workers"  # manager, preprocessing, export
        first.send_signal(signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + 15
        while any(process_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in workers if process_running(p)] == [], "worker processes outlived the killed predict"
    finally:
        for pid in _descendants(first.pid) | workers:  # nothing may be left running after a failure
            if process_running(pid):
                os.kill(pid, signal.SIGKILL)
        first.kill()
        first.communicate()

    second = start_predict(inputs, out, model_folder, "-npp", "2", "-nps", "2", "--continue_prediction")
    assert second.returncode == 0, second.stderr_text
    expected, got = _segmentations(tmp_path / "reference"), _segmentations(out)
    assert sorted(got) == sorted(expected) and len(got) == N_CASES
    for name in expected:
        assert got[name] == expected[name], name  # byte for byte
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary, no lock
