"""What the tests of the console commands share: the real ``nnunet-missingmod`` in a subprocess, small random cases
and label maps for it, and the processes it starts (``/proc``)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import SimpleITK as sitk
from conftest import SHAPE_ZYX

from nnunet_missingmod.atomic_io import release_all_locks
from nnunet_missingmod.modalities import MODALITIES

COMMAND = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")


def run_cli(*args) -> subprocess.CompletedProcess:
    """The real console command, in a subprocess (the terminal output is what is tested)."""
    env = dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1")
    return subprocess.run([COMMAND, *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def run_in_process(args, env: dict) -> subprocess.CompletedProcess:
    """The console command's ``main`` in this process (no torch import per call), with ``env`` as the environment
    for the call, what it prints captured, and the result shaped as a subprocess's."""
    from nnunet_missingmod.cli import main
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse: usage errors
                code = e.code if isinstance(e.code, int) else 2
    finally:
        os.environ.clear()
        os.environ.update(saved)
        release_all_locks()  # what the command's process would do when it exits
    return subprocess.CompletedProcess(["nnunet-missingmod", *map(str, args)], code, stdout.getvalue(),
                                       stderr.getvalue())


def start_predict(inputs, out, model, *extra, wait=True) -> subprocess.Popen:
    """``predict`` of fold 0 on the CPU without mirroring; with ``wait`` its output is in ``stdout_text`` and
    ``stderr_text``, without it the caller signals the running process."""
    args = [COMMAND, "predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
            "--disable_tta", "--disable_progress_bar", *extra]
    env = dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        process.stdout_text, process.stderr_text = process.communicate(timeout=600)
    return process


def wait_for(condition, process, seconds=300) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


# A run of ``predict`` records case 0 once its export is collected, while it works on case 3 or 4 (the export worker
# starts behind the predictions): the cases from case 2 on are large, so that a run stopped (SIGSTOP, SIGTERM,
# SIGKILL) at its first recorded case still has cases left even when the test's process is slow to notice it.
SMALL_SHAPE, LARGE_SHAPE = (20, 20, 20), (28, 28, 28)  # 64 and 216 patches of 8^3


def write_predict_cases(folder, n, shape=None) -> None:
    """``n`` complete cases ``caseNN``: two small ones, then large ones (or all of ``shape``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        case_shape = shape or (SMALL_SHAPE if i < 2 else LARGE_SHAPE)
        for channel in range(len(MODALITIES)):
            image = sitk.GetImageFromArray(rng.normal(100, 20, case_shape).astype(np.float32))
            sitk.WriteImage(image, str(folder / f"case{i:02d}_{channel:04d}.nii.gz"))


def write_case(folder, case_id, modalities=MODALITIES, seed=0, shape=SHAPE_ZYX) -> None:
    """Random images of ``case_id`` for the named sequences only (nnU-Net's ``_0000`` ... file names)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for channel, modality in enumerate(MODALITIES):
        if modality in modalities:
            image = sitk.GetImageFromArray(rng.normal(100, 20, shape).astype(np.float32))
            sitk.WriteImage(image, str(folder / f"{case_id}_{channel:04d}.nii.gz"))


def write_label(folder, case_id, shape=SHAPE_ZYX) -> None:
    """A label map with a small tumour (labels 1 and 3) in nnU-Net's convention."""
    folder.mkdir(parents=True, exist_ok=True)
    label = np.zeros(shape, np.uint8)
    label[4:8, 4:9, 5:10] = 1
    label[5:7, 5:8, 6:9] = 3
    sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / f"{case_id}.nii.gz"))


def process_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
