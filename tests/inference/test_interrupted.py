"""``predict`` stopped by SIGTERM, started twice on one folder, on a full disk, and out of GPU memory: real
processes on the untrained tiny model of test_cli (seconds, not minutes)."""
from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from cli_helpers import start_predict, wait_for, write_predict_cases
from fs_helpers import fill, small_filesystem

from nnunet_missingmod.atomic_io import DiskFullError
from nnunet_missingmod.faults import OutOfMemory

N_CASES = 6
def _outputs(folder):
    return {p.name: (sitk.GetArrayFromImage(sitk.ReadImage(str(p))) if p.name.endswith(".nii.gz")
                     else json.loads(p.read_text()))
            for p in sorted(folder.iterdir()) if p.name.endswith((".nii.gz", ".modalities.json"))}


def test_sigterm_leaves_only_complete_cases_and_continue_prediction_finishes_identically(tmp_path, model_folder):  # noqa: F811
    inputs = tmp_path / "in"
    write_predict_cases(inputs, N_CASES)
    reference = start_predict(inputs, tmp_path / "reference", model_folder)
    assert reference.returncode == 0, reference.stderr_text

    out = tmp_path / "out"
    # the default a user gets: background preprocessing and export (the tests' environment defaults to none)
    first = start_predict(inputs, out, model_folder, "-npp", "1", "-nps", "1", wait=False)
    wait_for(lambda: list(out.glob("*.modalities.json")), first)
    # frozen at its first recorded case, the run still holds the folder: nothing it does depends on how long the
    # second job takes to start
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first run ended before it could be stopped: make the cases larger"
        second = start_predict(inputs, out, model_folder)  # a second job on the same folder, by mistake
    finally:
        first.send_signal(signal.SIGTERM)  # delivered when it continues
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"is being written by process {first.pid} (predict on " in second.stderr_text
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    # a case is done when its sidecar is written, after its export; exports still running when SIGTERM came are
    # finished or removed, so a segmentation may exist without its sidecar (--continue_prediction redoes it)
    recorded = len(list(out.glob("*.modalities.json")))
    assert 0 < recorded < N_CASES, err
    assert f"stopped by SIGTERM after {recorded} case(s), {N_CASES - recorded} not predicted" in err
    assert "--continue_prediction" in err and "Traceback" not in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file, no lock
    done = sorted(p.name for p in out.glob("*.nii.gz"))
    assert len(done) >= recorded
    for name in done:  # every segmentation there is complete and equals the uninterrupted run's
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "reference" / name))))

    rest = start_predict(inputs, out, model_folder, "--continue_prediction")
    assert rest.returncode == 0, rest.stderr_text
    finished, expected = _outputs(out), _outputs(tmp_path / "reference")
    assert finished.keys() == expected.keys() and len(finished) == 2 * N_CASES
    for name, value in expected.items():
        if name.endswith(".nii.gz"):
            assert np.array_equal(finished[name], value), name
        else:  # the same sidecar, but for the folder it names
            assert {**finished[name], "output": None} == {**value, "output": None}, name


def _predictor(model):
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    predictor = MissingModalityPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model), (0,))
    return predictor


def test_a_full_disk_stops_predict_naming_the_file_and_keeps_the_earlier_result(tmp_path, model_folder):  # noqa: F811
    inputs = tmp_path / "in"
    write_predict_cases(inputs, 2, shape=(24, 24, 24))
    predictor = _predictor(model_folder)
    with small_filesystem(tmp_path / "small", size_kb=1024) as small:
        out = small / "out"
        first = predictor.predict_from_files(str(inputs), str(out))
        assert [r.ok for r in first] == [True, True]
        earlier = {p.name: p.read_bytes() for p in out.iterdir()}
        fill(small)
        with pytest.raises(DiskFullError, match=f"disk full while writing {out / 'case00.nii.gz'}"):
            predictor.predict_from_files(str(inputs), str(out))
        assert {p.name: p.read_bytes() for p in out.iterdir()} == earlier  # nothing partial, nothing lost


class OutOfMemoryNetwork(torch.nn.Module):
    """A network that needs more GPU memory than there is, as a large patch on a small GPU."""

    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def test_running_out_of_gpu_memory_is_one_message_with_the_fixes(tmp_path, model_folder):  # noqa: F811
    inputs = tmp_path / "in"
    write_predict_cases(inputs, 1, shape=(12, 12, 12))
    predictor = _predictor(model_folder)
    predictor.network = OutOfMemoryNetwork()
    predictor.list_of_parameters = [{}]  # its (empty) state dict, loaded per fold by nnU-Net
    with pytest.raises(OutOfMemory) as raised:
        predictor.predict_from_files(str(inputs), str(tmp_path / "out"))
    message = str(raised.value)
    assert message.startswith("case case00: cpu ran out of memory in the sliding-window prediction (patch 8x8x8")
    fixes = [message.index(fix) for fix in ("--not_on_device", "-device cpu", "-gpu_memory_target")]
    assert fixes == sorted(fixes) and "A smaller -step_size does not help" in message
    assert not (tmp_path / "out" / "case00.nii.gz").exists()
