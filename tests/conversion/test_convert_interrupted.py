"""``convert`` stopped by a scheduler (SIGTERM), killed (SIGKILL), started twice, or on a full disk: real
processes and a real small file system."""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fs_helpers import fill, small_filesystem

from nnunet_missingmod.conversion.convert import convert_dataset
from nnunet_missingmod.conversion.labels import convert_labels_back
from nnunet_missingmod.conversion.phantom import write_phantom_dataset
from nnunet_missingmod.atomic_io import DiskFullError

N_SLOW_CASES = 60


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory) -> Path:
    """A BraTS 2019 source whose conversion takes seconds: uncompressed .nii files (converted by gzipping them),
    one 2 mm phantom case hard-linked under many case ids (no disk space for the copies)."""
    root = tmp_path_factory.mktemp("slow")
    write_phantom_dataset(root / "one", 1, "brats2019", spacing=2.0, progress=False)
    (case_dir,) = [p for p in (root / "one").rglob("*") if p.is_dir() and any(p.glob("*.nii.gz"))]
    plain = {}
    for file in case_dir.glob("*.nii.gz"):
        suffix = file.name[len(case_dir.name):-len(".nii.gz")]  # _t1, _seg ...
        plain[suffix] = root / f"plain{suffix}.nii"
        with gzip.open(file) as fin, open(plain[suffix], "wb") as fout:
            shutil.copyfileobj(fin, fout)
    source = root / "source"
    for i in range(N_SLOW_CASES):
        case = f"BraTS19_PHA_{i:04d}_1"
        (source / "HGG" / case).mkdir(parents=True)
        for suffix, file in plain.items():
            os.link(file, source / "HGG" / case / f"{case}{suffix}.nii")
    return source


def _env(raw: Path) -> dict:
    return dict(os.environ, nnUNet_raw=str(raw), nnUNet_preprocessed=str(raw.parent / "pre"),
                nnUNet_results=str(raw.parent / "res"), PYTHONUNBUFFERED="1")


def _start_convert(source: Path, raw: Path, dataset_id: int) -> subprocess.Popen:
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    return subprocess.Popen([exe, "convert", "brats2019", str(source), str(dataset_id)], env=_env(raw),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_temporary_folder(raw: Path, process: subprocess.Popen) -> Path:
    """The temporary dataset folder, once it holds a converted image."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for temp in raw.glob(".Dataset*.tmp-*"):
            if any((temp / "imagesTr").glob("*.nii.gz")):
                return temp
        time.sleep(0.05)
    raise AssertionError("the conversion wrote no image within 120 s")


def test_sigterm_removes_the_temporary_copy(tmp_path, slow_source):
    raw = tmp_path / "raw"
    process = _start_convert(slow_source, raw, 951)
    temp = _wait_for_temporary_folder(raw, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; the partial conversion was removed" in err and "Traceback" not in err
    assert not temp.exists() and os.listdir(raw) == []  # no dataset, no temporary folder, no lock


def test_a_second_convert_is_refused_and_a_killed_ones_folder_is_removed_by_the_next(tmp_path, slow_source):
    raw = tmp_path / "raw"
    first = _start_convert(slow_source, raw, 952)
    temp = _wait_for_temporary_folder(raw, first)
    second = _start_convert(slow_source, raw, 952)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert f"dataset ID 952 in {raw} is being written by process {first.pid} (convert on " in err
    first.kill()  # SIGKILL: nothing of ours runs, the temporary folder stays
    first.communicate()
    assert temp.is_dir()
    # the same ID again (a small source: the point is the killed run's folder and lock, not the conversion); the
    # next convert of another ID removes such a folder too (test_only_folders_of_processes_that_are_gone_are_removed)
    small, _ = tmp_path / "small", write_phantom_dataset(tmp_path / "small", 1, "brats2019", progress=False)
    again = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod"), "convert",
                            "brats2019", str(small), "952"], env=_env(raw), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"removed {temp}, left by a conversion that was killed (process {first.pid} is gone)" in again.stdout
    assert not temp.exists() and sorted(p.name for p in raw.iterdir()) == ["Dataset952_BraTS2019"]


def test_a_full_disk_stops_convert_and_labels_back_with_nothing_partial_left(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_phantom_dataset(source, 2, "brats2019", spacing=4.0, progress=False)
    with small_filesystem(tmp_path / "small", size_kb=512) as small:
        raw = small / "raw"
        raw.mkdir()
        monkeypatch.setenv("nnUNet_raw", str(raw))
        with pytest.raises(DiskFullError) as raised:
            convert_dataset("brats2019", source, 954, progress=False)
        message = str(raised.value)
        assert "disk full while writing" in message and "imagesTr" in message
        assert "the converted dataset needs about" in message and "the partial conversion was removed" in message
        assert os.listdir(raw) == []

        predictions, out = tmp_path / "pred", small / "back"
        predictions.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):  # nnU-Net labels 0-3, which labels-back maps to BraTS values
            sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 4, (40, 40, 40)).astype(np.uint8)),
                            str(predictions / f"case{i}.nii.gz"))
        out.mkdir()
        (out / "case0.nii.gz").write_bytes(b"earlier result")
        fill(small)
        with pytest.raises(DiskFullError, match=f"disk full while writing {out / 'case0.nii.gz'}"):
            convert_labels_back("brats2019", predictions, out, progress=False)
        assert (out / "case0.nii.gz").read_bytes() == b"earlier result"
        assert [p.name for p in out.iterdir()] == ["case0.nii.gz"]


def test_only_folders_of_processes_that_are_gone_are_removed(tmp_path):
    """pid and start time: a folder named with a live process's pid stays, even without its lock held (a pid
    given to a process that started after the folder last changed is not its owner)."""
    raw = tmp_path / "raw"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(2.5)  # the folders below change well after 'live' started
        kept = raw / f".Dataset957_Other.tmp-{live.pid}"
        removed = raw / f".Dataset956_Other.tmp-{dead.pid}"
        for folder in (kept, removed):
            (folder / "imagesTr").mkdir(parents=True)
            (folder / "imagesTr" / "x.nii.gz").write_bytes(b"partial")
        small = tmp_path / "small"
        write_phantom_dataset(small, 1, "brats2019", progress=False)
        result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod"), "convert",
                                 "brats2019", str(small), "958"], env=_env(raw), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert f"removed {removed}, left by a conversion that was killed (process {dead.pid} is gone)" in result.stdout
        assert sorted(p.name for p in raw.iterdir()) == sorted([kept.name, "Dataset958_BraTS2019"])
    finally:
        live.kill()
        live.wait()
