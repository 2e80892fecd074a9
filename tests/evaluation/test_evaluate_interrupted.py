"""``evaluate`` stopped by SIGTERM (a scheduler's time limit): a real process and a real signal, on the untrained
tiny model of inference/test_cli (seconds, not minutes). The prediction being written is finished or removed,
never left partial, and the exit status is 143. The stopped run and the rerun use background preprocessing and
export (``-npp 1 -nps 1``), the reference the in-process path: the same files either way."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

from nnunet_missingmod.modalities import MODALITIES

N_CASES = 4
SUBSETS = ("T1ce", "T2", "T1+T1ce+T2+FLAIR")
SHAPE = (20, 20, 20)  # 64 patches of 8^3 per prediction: a few seconds each on a busy CPU core
PIPELINED = ("-npp", "1", "-nps", "1")


def _write_cases(images, labels):
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.uint8)
    label[5:12, 5:12, 5:12] = 1
    for i in range(N_CASES):
        for channel in range(len(MODALITIES)):
            image = sitk.GetImageFromArray(rng.normal(100, 20, SHAPE).astype(np.float32))
            sitk.WriteImage(image, str(images / f"case{i:02d}_{channel:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / f"case{i:02d}.nii.gz"))


def _evaluate(images, labels, out, model, *extra, wait=True):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    args = [exe, "evaluate", "-i", str(images), "-l", str(labels), "-o", str(out), "-m", str(model), "-f", "0",
            "--subsets", ";".join(SUBSETS), "-device", "cpu", "--disable_tta", "-np", "1", *extra]
    env = dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        process.stdout_text, process.stderr_text = process.communicate(timeout=600)
    return process


def _predictions(out):
    """Relative path -> voxels of every prediction under OUT/predictions (reading a partial .nii.gz fails)."""
    return {str(p.relative_to(out)): sitk.GetArrayFromImage(sitk.ReadImage(str(p)))
            for p in sorted((out / "predictions").rglob("*.nii.gz"))}


def test_sigterm_leaves_only_complete_predictions_and_exits_143(tmp_path, model_folder):  # noqa: F811
    images, labels = tmp_path / "images", tmp_path / "labels"
    _write_cases(images, labels)
    reference = _evaluate(images, labels, tmp_path / "reference", model_folder)
    assert reference.returncode == 0, reference.stderr_text
    expected = _predictions(tmp_path / "reference")
    assert len(expected) == N_CASES * len(SUBSETS)

    out = tmp_path / "out"
    run = _evaluate(images, labels, out, model_folder, *PIPELINED, wait=False)
    deadline = time.monotonic() + 300
    while not list((out / "predictions").rglob("*.nii.gz")):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    assert run.poll() is None, "evaluate ended before it could be stopped: make the cases larger"
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 128 + signal.SIGTERM
    assert "evaluate: stopped by SIGTERM" in err and "rerun the command" in err and "Traceback" not in err
    done = _predictions(out)
    assert 0 < len(done) < len(expected)
    for name, voxels in done.items():  # each one left is complete and equals the uninterrupted run's
        assert np.array_equal(voxels, expected[name]), name
    assert not [str(p) for p in out.rglob(".*")]  # no temporary file, no lock
    assert not (out / "metrics.csv").exists()  # stopped while predicting: no report

    rerun = _evaluate(images, labels, out, model_folder, *PIPELINED)
    assert rerun.returncode == 0, rerun.stderr_text
    finished = _predictions(out)
    assert finished.keys() == expected.keys()
    for name, voxels in expected.items():
        assert np.array_equal(finished[name], voxels), name
    assert (out / "metrics.csv").is_file()
