"""Pipelined ``predict`` (-npp/-nps background processes, nnU-Net's preprocessing iterator and export pool) against
the in-process path (-npp 0 -nps 0): the same files, failures isolated, --continue_prediction and -num_parts. Real
processes on the untrained tiny model of test_cli."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from cli_helpers import run_in_process


SHAPE_ZYX = (14, 16, 18)
# case -> the channels it has (mixed missing sequences); "constant" has a constant T2 (treated as missing)
GOOD_CASES = {"full": (0, 1, 2, 3), "no_t1ce": (0, 2, 3), "flair_only": (3,), "constant": (0, 1, 2, 3)}
BAD_CASES = {"garbage": "cannot read", "geometry": "has spacing"}


def _write(path, array, spacing=(1.0, 1.0, 1.0)):
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline_in")
    rng = np.random.default_rng(1)
    for case, channels in GOOD_CASES.items():
        for channel in channels:
            array = np.full(SHAPE_ZYX, 7.0) if (case, channel) == ("constant", 2) else rng.normal(100, 20, SHAPE_ZYX)
            _write(folder / f"{case}_{channel:04d}.nii.gz", array)
    (folder / "garbage_0000.nii.gz").write_bytes(b"not a NIfTI file at all")
    _write(folder / "garbage_0001.nii.gz", rng.normal(100, 20, SHAPE_ZYX))
    _write(folder / "geometry_0000.nii.gz", rng.normal(100, 20, SHAPE_ZYX))
    _write(folder / "geometry_0002.nii.gz", rng.normal(100, 20, SHAPE_ZYX), spacing=(1.0, 2.0, 1.0))
    return folder


def _predict(inputs, out, model, *extra):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet-missingmod")
    args = [exe, "predict", "-i", str(inputs), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
            "--disable_tta", "--disable_progress_bar", *extra]
    env = dict(os.environ, nnUNet_compile="f", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)


def _outputs(folder):
    """Every case output: segmentations and probabilities as arrays, sidecars without the folder they name."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".nii.gz"):
            found[path.name] = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        elif path.name.endswith(".npz"):
            found[path.name] = np.load(path)["probabilities"]
        elif path.name.endswith(".modalities.json"):
            sidecar = json.loads(path.read_text())
            found[path.name] = {**sidecar, "output": sidecar["output"] and os.path.basename(sidecar["output"])}
    return found


def _assert_same(found, expected):
    assert found.keys() == expected.keys()
    for name, value in expected.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(found[name], value), name
        else:
            assert found[name] == value, name


@pytest.fixture(scope="module")
def sequential(inputs, model_folder, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("sequential")
    result = _predict(inputs, out, model_folder, "-npp", "0", "-nps", "0", "--save_probabilities")
    assert result.returncode == 1, result.stderr
    return out, result


def test_pipelined_files_equal_the_in_process_path_and_bad_cases_fail_alone(inputs, model_folder, sequential,  # noqa: F811
                                                                            tmp_path):
    reference, reference_run = sequential
    out = tmp_path / "pipelined"
    result = _predict(inputs, out, model_folder, "-npp", "2", "-nps", "2", "--save_probabilities")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    for run in (reference_run, result):
        assert f"{len(GOOD_CASES)} of {len(GOOD_CASES) + len(BAD_CASES)} cases predicted" in run.stdout
        assert "2 failed: garbage, geometry" in run.stdout
    found, expected = _outputs(out), _outputs(reference)
    _assert_same(found, expected)
    assert len(found) == 3 * len(GOOD_CASES) + len(BAD_CASES)  # .nii.gz, .npz, sidecar per good case
    for case, message in BAD_CASES.items():  # failed alone, the file named, no output
        assert message in found[f"{case}.modalities.json"]["error"]
        assert not list(out.glob(f"{case}.nii*")) and not (out / f"{case}.npz").exists()
    assert "garbage_0000.nii.gz" in found["garbage.modalities.json"]["error"]
    assert "geometry_0002.nii.gz" in found["geometry.modalities.json"]["error"]
    assert found["no_t1ce.modalities.json"]["missing"] == ["T1ce"]
    assert found["constant.modalities.json"]["missing"] == ["T2"]
    assert found["flair_only.modalities.json"]["subset"] == "FLAIR"
    assert (out / "full.pkl").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file, no lock


def test_parts_and_continue_prediction_with_background_processes(inputs, model_folder, sequential,  # noqa: F811
                                                                 tmp_path):
    reference, _ = sequential
    out = tmp_path / "parts"
    for part_id in (0, 1):  # preprocessing in workers, export here; then the other way round
        npp, nps = ("2", "0") if part_id == 0 else ("0", "2")
        part = _predict(inputs, out, model_folder, "-npp", npp, "-nps", nps, "--save_probabilities",
                        "-num_parts", "2", "-part_id", str(part_id))
        assert part.returncode == 1, part.stderr  # each part has one of the two bad cases (sorted: 0 geometry ...)
    _assert_same(_outputs(out), _outputs(reference))

    for suffix in (".nii.gz", ".npz", ".pkl", ".modalities.json"):
        (out / f"no_t1ce{suffix}").unlink()
    (out / "full.modalities.json").unlink()  # a segmentation without its sidecar is not done
    rest = _predict(inputs, out, model_folder, "--continue_prediction", "--save_probabilities")
    assert "2 of 4 cases predicted" in rest.stdout, rest.stdout + rest.stderr  # the two above, and the two bad ones
    assert "full: " in rest.stdout and "no_t1ce: " in rest.stdout and "flair_only" not in rest.stdout
    _assert_same(_outputs(out), _outputs(reference))


@pytest.mark.parametrize("flag", ["-npp", "-nps"])
def test_a_negative_process_count_is_one_clear_error(inputs, model_folder, tmp_path, flag):  # noqa: F811
    result = run_in_process(["predict", "-i", inputs, "-o", tmp_path / "out", "-m", model_folder, "-f", "0",
                             "-device", "cpu", flag, "-1"], dict(os.environ, nnUNet_compile="f"))
    assert result.returncode == 2 and f"{flag} must be 0" in result.stderr
    assert not (tmp_path / "out").exists()
