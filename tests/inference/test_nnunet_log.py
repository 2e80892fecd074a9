"""nnunet_log: nnU-Net's own output goes to OUTPUT/<command>.log, appended per run, and the folder is claimed."""
import sys

from nnunet_missingmod.inference.nnunet_log import nnunet_output_to, start_log
from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME, release_folder


def test_output_inside_the_block_goes_to_the_log_and_runs_append(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["nnunet-missingmod", "predict", "-i", "in dir", "-o", str(tmp_path)])
    try:
        log = start_log(str(tmp_path), "predict", verbose=False)
        assert (tmp_path / FOLDER_LOCK_NAME).is_file()  # the folder is this run's now
        with nnunet_output_to(log):
            print("from nnU-Net")
            print("a warning", file=sys.stderr)
        print("ours")
        second = start_log(str(tmp_path), "predict", verbose=False)  # claiming again in one process: allowed
    finally:
        release_folder(str(tmp_path))
    assert second == log == str(tmp_path / "predict.log")
    lines = (tmp_path / "predict.log").read_text().splitlines()
    assert lines[0].startswith("== ") and lines[0].endswith("nnunet-missingmod predict -i 'in dir' -o " + str(tmp_path))
    assert lines[1:3] == ["from nnU-Net", "a warning"] and lines[3].startswith("== ")
    captured = capsys.readouterr()
    assert captured.out == "ours\n" and captured.err == ""
    assert not (tmp_path / FOLDER_LOCK_NAME).exists()


def test_verbose_keeps_nnunet_output_on_the_terminal_and_writes_no_log(tmp_path, capsys):
    try:
        log = start_log(str(tmp_path / "out"), "evaluate", verbose=True)
        with nnunet_output_to(log):
            print("from nnU-Net")
    finally:
        release_folder(str(tmp_path / "out"))
    assert log is None and capsys.readouterr().out == "from nnU-Net\n"
    assert list((tmp_path / "out").iterdir()) == []
