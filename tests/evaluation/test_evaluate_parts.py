"""``evaluate -num_parts N -part_id I`` and ``evaluate-merge``: real processes on the untrained tiny model of
conftest's ``model_folder``, a few 12^3 phantoms (8 patches per prediction). Two parts merged write the report one
call writes; a killed part resumes; a changed checkpoint is refused; a missing or unfinished part stops the merge.
In-process preprocessing and export (``-npp 0 -nps 0``: no worker start-up; test_evaluate_interrupted runs the
workers)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_missingmod.modalities import MODALITIES

N_CASES = 5  # parts of 3 and 2 cases
SUBSETS = ("T1ce", "T1+T1ce+T2+FLAIR")
SHAPE = (12, 12, 12)


def _write_cases(images, labels):
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_CASES):
        label = np.zeros(SHAPE, np.uint8)
        label[3:8, 3:8, 2 + i % 3:9] = 1 + i % 3
        for channel in range(len(MODALITIES)):
            image = sitk.GetImageFromArray((rng.normal(100, 20, SHAPE) + 30 * label).astype(np.float32))
            sitk.WriteImage(image, str(images / f"case{i:02d}_{channel:04d}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(labels / f"case{i:02d}.nii.gz"))


def _command(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    return [exe, *map(str, args)]


def _env():
    return dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _evaluate_args(data, out, model, *extra):
    images, labels = data
    return _command("evaluate", "-i", images, "-l", labels, "-o", out, "-m", model, "-f", "0",
                    "--subsets", ";".join(SUBSETS), "-device", "cpu", "--disable_tta", "-np", "1",
                    "--bootstrap", "200", "--figures", "1", "-npp", "0", "-nps", "0", *extra)


def _run(args):
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600)


def _part(data, out, model, part_id, num_parts=2):
    return _evaluate_args(data, out, model, "-num_parts", num_parts, "-part_id", part_id)


def _rows(out):
    with open(out / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def _prediction_files(out):
    """The predictions under OUT/predictions, not the hidden temporary files of one being written."""
    return sorted(p for p in (out / "predictions").rglob("*.nii.gz") if not p.name.startswith("."))


def _predictions(out):
    return {str(p.relative_to(out)): sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in _prediction_files(out)}


def _start_and_kill(args, out):
    """Start ``args`` and SIGKILL it once its first prediction is written (no handler runs: as an OOM kill)."""
    run = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not _prediction_files(out):
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=60)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_folder):
    """One call without parts (``reference``) and the same evaluation as two parts (``parted``): part 0 killed
    after its first prediction, a merge tried then (refused), part 0 rerun, part 1, the merge."""
    root = tmp_path_factory.mktemp("parts")
    data = (root / "images", root / "labels")
    _write_cases(*data)
    reference = _run(_evaluate_args(data, root / "reference", model_folder))
    assert reference.returncode == 0, reference.stderr
    parted = root / "parted"
    killed = _start_and_kill(_part(data, parted, model_folder, 0), parted)
    after_kill = {"returncode": killed.returncode, "predictions": _predictions(parted),
                  "manifest": json.loads((parted / "parts" / "part0of2.json").read_text())}
    early = _run(_command("evaluate-merge", parted))
    rerun = _run(_part(data, parted, model_folder, 0))
    assert rerun.returncode == 0, rerun.stderr
    assert "part 0 of 2 finished" in rerun.stdout and "evaluate-merge" in rerun.stdout
    second = _run(_part(data, parted, model_folder, 1))
    assert second.returncode == 0, second.stderr
    merged = _run(_command("evaluate-merge", parted))
    assert merged.returncode == 0, merged.stderr
    return {"root": root, "data": data, "reference": root / "reference", "parted": parted, "early": early,
            "after_kill": after_kill, "rerun": rerun}


def test_two_parts_merged_equal_one_run(runs):
    reference, parted = runs["reference"], runs["parted"]
    assert _rows(parted) == _rows(reference)  # row for row, in the same order
    assert len(_rows(reference)) == 1 + N_CASES * len(SUBSETS) * 3  # 3 regions
    assert json.loads((parted / "summary.json").read_text()) == json.loads((reference / "summary.json").read_text())
    assert (parted / "summary.md").read_text() == (reference / "summary.md").read_text()
    for name in ("robustness.png", "subsets.png"):
        assert (parted / name).is_file()
    assert sorted(p.name for p in (parted / "cases").iterdir()) == \
        sorted(p.name for p in (reference / "cases").iterdir())
    expected = _predictions(reference)
    assert _predictions(parted).keys() == expected.keys()
    for name, voxels in _predictions(parted).items():
        assert np.array_equal(voxels, expected[name]), name
    # nnU-Net's split: the sorted cases, every 2nd from part_id
    manifests = [json.loads((parted / "parts" / f"part{i}of2.json").read_text()) for i in range(2)]
    assert [m["cases"] for m in manifests] == [["case00", "case02", "case04"], ["case01", "case03"]]
    assert all(m["finished"] for m in manifests)
    assert not [str(p) for p in parted.rglob(".*")]  # no temporary file, no lock


def test_a_killed_part_is_rerun_to_the_same_rows(runs):
    after_kill = runs["after_kill"]
    assert after_kill["returncode"] == -signal.SIGKILL and not after_kill["manifest"]["finished"]
    assert 0 < len(after_kill["predictions"]) < 3 * len(SUBSETS)  # part 0: 3 cases
    assert "kept from an earlier call" in runs["rerun"].stdout
    finished = _predictions(runs["parted"])
    for name, voxels in after_kill["predictions"].items():  # kept, and equal to the run without parts
        assert np.array_equal(finished[name], voxels), name
    assert _rows(runs["parted"]) == _rows(runs["reference"])  # the merge, after the rerun: row for row


def test_merge_with_a_missing_or_unfinished_part_fails_with_one_line(runs):
    early = runs["early"]  # part 0 killed, part 1 not started
    assert early.returncode == 2 and early.stderr.count("\n") == 1, early.stderr
    assert "part(s) 1 never started" in early.stderr and "part(s) 0 unfinished" in early.stderr
    assert "-num_parts 2 -part_id I" in early.stderr


def test_a_changed_checkpoint_is_refused_in_a_rerun(runs, tmp_path, model_folder):
    out = tmp_path / "out"
    shutil.copytree(runs["parted"], out)
    manifest = out / "parts" / "part1of2.json"
    content = json.loads(manifest.read_text())
    (checkpoint, _), = content["checkpoints"].items()
    manifest.write_text(json.dumps({**content, "checkpoints": {checkpoint: "0" * 64}}))  # another checkpoint then
    rerun = _run(_part(runs["data"], out, model_folder, 1))
    assert rerun.returncode == 2 and rerun.stderr.count("\n") == 1, rerun.stderr
    assert f"checkpoint {checkpoint} changed" in rerun.stderr and "refusing to mix" in rerun.stderr
    assert checkpoint == str(model_folder / "fold_0" / "checkpoint_final.pth")


def test_parts_scored_with_another_one_empty_hd95_are_not_merged(runs, tmp_path):
    """Parts written before the one-empty HD95 followed the variant's challenge (373.13 mm for every variant): their
    records would be reported under this version's 374 mm, so the merge refuses them."""
    from nnunet_missingmod.errors import MissingModError
    from nnunet_missingmod.evaluation.parts import run_merge
    out = tmp_path / "out"
    shutil.copytree(runs["parted"], out)
    for manifest in (out / "parts").glob("part*of2.json"):
        content = json.loads(manifest.read_text())
        assert content["settings"].pop("one_empty_hd95") == 374.0  # the default variant's, recorded by each part
        manifest.write_text(json.dumps(content))
    before = (out / "summary.json").read_text()
    with pytest.raises(MissingModError, match="scored the HD95 of a pair with one empty mask as 373.13 mm, this "
                                              "version as 374 mm"):
        run_merge(str(out))
    assert (out / "summary.json").read_text() == before
