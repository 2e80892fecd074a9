"""atomic_io: atomic writes (a reader never sees a half-written file, a failed or disk-full write keeps the old one)
and folder locks between real processes."""
import os
import signal
import stat
import subprocess
import sys

import pytest
from fs_helpers import small_filesystem

from nnunet_missingmod.atomic_io import atomic_output, atomic_write_bytes, atomic_write_text


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_atomic_writes_replace_the_file_with_ordinary_permissions(tmp_path):
    text_file, bytes_file = tmp_path / "a.json", tmp_path / "b.bin"
    text_file.write_text("old")
    atomic_write_text(str(text_file), "new\r\nline")
    atomic_write_bytes(str(bytes_file), b"\x00\x01")
    assert text_file.read_bytes() == b"new\r\nline" and bytes_file.read_bytes() == b"\x00\x01"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(bytes_file).st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert _leftovers(tmp_path) == []


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"earlier plot")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_output(str(target)) as temporary:
            assert os.path.dirname(temporary) == str(tmp_path) and temporary != str(target)
            with open(temporary, "wb") as f:
                f.write(b"half a plot")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"earlier plot" and _leftovers(tmp_path) == []


def test_report_plots_are_written_through_atomic_output(tmp_path):
    """A figure whose savefig fails leaves the earlier plot and no temporary file (the report's own helper)."""
    from nnunet_missingmod.evaluation.report import _atomic_savefig

    class FailingFigure:
        def savefig(self, path, **kwargs):
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")

    target = tmp_path / "robustness.png"
    target.write_bytes(b"earlier plot")
    with pytest.raises(OSError, match="disk full"):
        _atomic_savefig(FailingFigure(), str(target))
    assert target.read_bytes() == b"earlier plot" and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- folder locks
HOLD_LOCK = """
import sys, time
from nnunet_missingmod.atomic_io import claim_folder
part = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 2 else None
claim_folder(sys.argv[1], "predict", part)
print("holding", flush=True)
time.sleep(120)
"""


def _holder(folder, *part):
    """A real process of ours holding ``folder`` (as predict does), started and waited for."""
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder), *map(str, part)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "holding"
    return process


def _stop(process):
    process.kill()
    process.wait()


def test_a_second_writer_of_a_folder_is_refused_with_the_other_process_id(tmp_path):
    from nnunet_missingmod.atomic_io import FolderBusyError, claim_folder, release_folder
    holder = _holder(tmp_path / "out")
    try:
        with pytest.raises(FolderBusyError, match=f"is being written by process {holder.pid} \\(predict on "):
            claim_folder(str(tmp_path / "out"), "evaluate")
    finally:
        _stop(holder)
    claim_folder(str(tmp_path / "out"), "evaluate")  # the kernel released the lock of the killed process
    release_folder(str(tmp_path / "out"))
    assert _leftovers(tmp_path / "out") == []  # a clean release removes the lock file


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_message(tmp_path, capsys):
    from nnunet_missingmod.atomic_io import claim_folder, release_folder
    holder = _holder(tmp_path / "out")
    _stop(holder)  # SIGKILL: the lock file stays, naming its process
    claim_folder(str(tmp_path / "out"), "predict")
    assert f"taking over the lock of {tmp_path / 'out'} left by process {holder.pid}" in capsys.readouterr().err
    release_folder(str(tmp_path / "out"))


HOLD_LOCK_WITH_CHILD = """
import os, subprocess, sys, time
from nnunet_missingmod import atomic_io
atomic_io.claim_folder(sys.argv[1], "predict")
if sys.argv[2] == "exec":  # a child that shares the lock's descriptor (as one started without our fork hook)
    (fd, _), = atomic_io._held_locks.values()
    child = subprocess.Popen(["sleep", "60"], pass_fds=[fd]).pid
else:  # a forked child (multiprocessing's fork processes, nnU-Net's Manager)
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # the fork hooks have run before this line: tell the parent so
        os.write(ready_write, b"1")
        time.sleep(60)
        os._exit(0)
    os.read(ready_read, 1)
print(child, flush=True)
time.sleep(120)
"""


def _holder_with_child(folder, how):
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK_WITH_CHILD, str(folder), how], stdout=subprocess.PIPE,
                               text=True)
    return process, int(process.stdout.readline())


def test_a_lock_still_held_by_a_child_of_a_killed_process_is_taken_over(tmp_path, capsys):
    from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME, claim_folder, lock_is_held, release_folder
    folder = tmp_path / "out"
    holder, child = _holder_with_child(folder, "exec")
    try:
        _stop(holder)
        assert lock_is_held(str(folder / FOLDER_LOCK_NAME))  # the child outlived it, holding the lock
        claim_folder(str(folder), "predict")  # the recorded holder is gone (pid and start time): not blocked
        err = capsys.readouterr().err
        assert f"taking over the lock of {folder} left by process {holder.pid}" in err
        assert "a process it started still held the lock" in err
        release_folder(str(folder))
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_forked_child_does_not_keep_its_parents_lock(tmp_path):
    from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME, lock_is_held
    folder = tmp_path / "out"
    holder, child = _holder_with_child(folder, "fork")
    try:
        assert lock_is_held(str(folder / FOLDER_LOCK_NAME))
        _stop(holder)
        assert not lock_is_held(str(folder / FOLDER_LOCK_NAME))  # the forked child, still running, holds nothing
    finally:
        os.kill(child, signal.SIGKILL)


def test_parts_of_one_split_share_a_folder_but_not_a_part(tmp_path):
    from nnunet_missingmod.atomic_io import FolderBusyError, claim_folder, release_folder
    folder = tmp_path / "out"
    holder = _holder(folder, 0, 2)
    try:
        claim_folder(str(folder), "predict", (1, 2))  # the other part: allowed
        release_folder(str(folder))
        with pytest.raises(FolderBusyError, match=f"-part_id 0 of -num_parts 2\\) is being written by process "
                                                  f"{holder.pid}"):
            claim_folder(str(folder), "predict", (0, 2))
        with pytest.raises(FolderBusyError, match=f"process {holder.pid}"):
            claim_folder(str(folder), "predict")  # the whole folder while a part runs
    finally:
        _stop(holder)


# ------------------------------------------------------------------------------------------------- disk full
def test_a_full_disk_names_the_file_keeps_the_earlier_one_and_leaves_no_partial_file(tmp_path):
    from nnunet_missingmod.atomic_io import DiskFullError
    with small_filesystem(tmp_path / "small", size_kb=1024) as small:
        target = small / "report.json"
        target.write_bytes(b"earlier report")
        with pytest.raises(DiskFullError) as raised:
            atomic_write_bytes(str(target), b"x" * 2_000_000)
        message = str(raised.value)
        assert f"disk full while writing {target}" in message and "free on" in message
        assert "needed; the earlier file is kept" in message
        assert target.read_bytes() == b"earlier report" and _leftovers(small) == []


def test_a_full_disk_is_seen_where_simpleitk_only_prints_it(tmp_path):
    """SimpleITK's NIfTI writer prints "wrote only 0 of N bytes" and returns normally on a full disk."""
    import numpy as np
    import SimpleITK as sitk
    from nnunet_missingmod.atomic_io import DiskFullError, atomic_output
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((100, 100, 100)).astype(np.float32))
    with small_filesystem(tmp_path / "small", size_kb=1024) as small:
        target = small / "seg.nii.gz"
        with pytest.raises(DiskFullError, match=f"disk full while writing {target}"):
            with atomic_output(str(target)) as tmp:
                sitk.WriteImage(image, tmp, useCompression=True)
        assert not target.exists() and _leftovers(small) == []


def test_a_second_demo_on_one_folder_is_refused_and_the_first_keeps_its_marker(tmp_path):
    from nnunet_missingmod.atomic_io import FolderBusyError, release_folder
    from nnunet_missingmod.demo.pipeline import MARKER_NAME, DataSettings, claim_output_folder
    settings, out = DataSettings(cases=4, test_cases=2, spacing_mm=6.0), tmp_path / "demo"
    assert claim_output_folder(out, settings) == "new"
    release_folder(str(out))
    holder = _holder(out)  # a live process of ours writing there
    try:
        with pytest.raises(FolderBusyError, match=f"is being written by process {holder.pid}"):
            claim_output_folder(out, settings)
    finally:
        _stop(holder)
    assert claim_output_folder(out, settings) == "existing"  # the lock file left by the killed one is not "foreign"
    release_folder(str(out))
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME]
