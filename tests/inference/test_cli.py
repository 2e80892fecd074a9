"""`predict` / `evaluate` behaviour that needs a real nnU-Net model folder but not a trained one: an untrained
tiny U-Net saved the way nnUNetv2_train saves it (plans.json, dataset.json, fold_0/checkpoint_final.pth), loaded
by nnU-Net's own initialize_from_trained_model_folder. Seconds instead of minutes."""
import json

import pytest
import torch

from conftest import TRAINER
from cli_helpers import run_cli, write_case, write_label
from presence_helpers import record_presence
from nnunet_missingmod.cli import main
from nnunet_missingmod.inference.discovery import discover_cases, restrict_to
from nnunet_missingmod.modalities import MODALITIES, ModalitySubset, parse_subset

NNUNET_CPU_NOTE = "perform_everything_on_device=True is only supported for cuda devices"  # nnU-Net prints this


def _sidecar(folder, case_id) -> dict:
    return json.loads((folder / f"{case_id}.modalities.json").read_text())


# ------------------------------------------------------------------------------------------------------ device
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_explicit_cuda_without_a_gpu_is_one_usage_error(tmp_path, capsys, command, model_folder):
    args = ["-i", tmp_path, "-o", tmp_path / "out", "-m", model_folder, "-f", "0", "-device", "cuda"]
    if command == "evaluate":
        args += ["-l", tmp_path]
    assert main([command, *map(str, args)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "-device cuda: PyTorch sees no CUDA GPU" in captured.err
    assert "-device cpu" in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()  # checked before anything is loaded or written


def test_device_defaults_to_auto_which_picks_what_this_machine_has(tmp_path):
    from nnunet_missingmod.cli import build_parser
    from nnunet_missingmod.inference.model_folder import resolve_device
    for command in (["predict", "-i", "x", "-o", "y"], ["evaluate", "-i", "x", "-l", "y", "-o", "z"]):
        assert build_parser().parse_args(command).device == "auto"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "-i", "x", "-o", "y", "-device", "gpu"])


# ------------------------------------------------------------------------------------- one subset, no mutation
def test_restrict_to_returns_a_new_case_and_keeps_what_it_left_out(tmp_path):
    write_case(tmp_path / "in", "case", ("T1", "T1ce", "FLAIR"))
    (case,) = discover_cases(str(tmp_path / "in"), MODALITIES)
    requested = parse_subset("t1c,T2")
    restricted = restrict_to(case, requested)
    assert sorted(case.files) == ["FLAIR", "T1", "T1ce"] and case.excluded == {}  # the discovered case is unchanged
    assert list(restricted.files) == ["T1ce"] and sorted(restricted.excluded) == ["FLAIR", "T1"]
    assert restricted.requested is requested and restricted.available == ModalitySubset.from_modalities(["T1ce"])
    assert restrict_to(case, None) is case
    with pytest.raises(AttributeError):
        restricted.files = {}


def test_the_requested_subset_reaches_the_network_as_one_mask(tmp_path, model_folder):
    from nnunet_missingmod.inference.predictor import MissingModalityPredictor
    write_case(tmp_path / "in", "case_a")
    write_case(tmp_path / "in", "case_b", ("T1", "T1ce"), seed=1)
    predictor = MissingModalityPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), (0,))
    recorder = record_presence(predictor.network)
    results = predictor.predict_from_files(str(tmp_path / "in"), str(tmp_path / "out"), modalities="t1c+t2f")
    assert [(r.case, r.subset, r.ok) for r in results] == [("case_a", "T1ce+FLAIR", True), ("case_b", "T1ce", True)]
    # told once per case for the whole sliding window, cleared after it
    assert recorder.told == [[False, True, False, True], None, [False, True, False, False], None]
    assert _sidecar(tmp_path / "out", "case_b")["ignored_files"].keys() == {"T1"}


# ------------------------------------------------------------------------- messages and nnU-Net's own output
def test_modalities_that_exclude_every_present_sequence_say_so(tmp_path, model_folder):
    write_case(tmp_path / "in", "case", ("T1", "FLAIR"))
    result = run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model_folder, "-f", "0",
                  "--modalities", "T2", "-device", "cpu")
    assert result.returncode == 1
    error = _sidecar(tmp_path / "out", "case")["error"]
    assert "no usable sequence" in error and "--modalities T2 left out its T1, FLAIR" in error
    assert "it has no T2" in error and error in result.stdout


def test_predict_keeps_nnunet_output_in_a_log_and_shows_one_progress_bar(tmp_path, model_folder):
    write_case(tmp_path / "in", "case_a")
    write_case(tmp_path / "in", "case_b", ("T2",), seed=1)
    out = tmp_path / "out"
    result = run_cli("predict", "-i", tmp_path / "in", "-o", out, "-m", model_folder, "-f", "0")
    assert result.returncode == 0, result.stderr
    terminal = result.stdout + result.stderr
    log = (out / "predict.log").read_text()
    assert NNUNET_CPU_NOTE in log and NNUNET_CPU_NOTE not in terminal  # nnU-Net's prints: in the log only
    assert "case_a: T1+T1ce+T2+FLAIR" in result.stdout and "case_b: T2 (missing: T1, T1ce, FLAIR)" in result.stdout
    assert f"nnU-Net's messages in {out / 'predict.log'}" in result.stdout
    assert "\x1b[A" not in terminal  # no nested progress bars
    verbose = run_cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "verbose", "-m", model_folder, "-f", "0",
                   "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert NNUNET_CPU_NOTE in verbose.stdout + verbose.stderr
    assert not (tmp_path / "verbose" / "predict.log").exists()


def test_evaluate_keeps_nnunet_output_in_a_log(tmp_path, model_folder):
    for i in range(2):
        write_case(tmp_path / "images", f"case_{i}", seed=i)
        write_label(tmp_path / "labels", f"case_{i}")
    out = tmp_path / "eval"
    result = run_cli("evaluate", "-i", tmp_path / "images", "-l", tmp_path / "labels", "-m", model_folder, "-f", "0",
                  "--subsets", "T1ce;T1+T1ce+T2+FLAIR", "-np", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    terminal = result.stdout + result.stderr
    assert NNUNET_CPU_NOTE in (out / "evaluate.log").read_text()
    assert NNUNET_CPU_NOTE not in terminal and "\x1b[A" not in terminal
    assert f"{TRAINER}: 2 case(s) x 2 subset(s) predicted" in result.stdout
    assert (out / "summary.md").is_file()
