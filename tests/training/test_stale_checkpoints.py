"""A training killed while it wrote a checkpoint leaves hidden temporary files (``.checkpoint_best.PID.*.tmp.pth``
and the empty reserved ``.checkpoint_best.PID.*.tmp``) in its fold folder: the next start of the fold removes those
of processes that are gone (pid and start time) and never those of a live process."""
import os
import subprocess
import sys
import time

from nnunet_missingmod.training.methods.dropout.trainer import ModalityDropoutTrainer
from trainer_helpers import make_trainer


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_next_start_of_a_fold_removes_what_a_killed_training_left(nnunet_root, tiny_preprocessed):
    trainer = make_trainer(nnunet_root, ModalityDropoutTrainer)
    fold = trainer.output_folder
    os.makedirs(fold, exist_ok=True)
    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        files = {
            f".checkpoint_best.{dead}.ab12cd_3.tmp.pth": b"partial checkpoint",  # killed while torch.save wrote
            f".checkpoint_best.{dead}.ab12cd_3.tmp": b"",  # the empty reserved name
            f".checkpoint_latest.{dead}.zz99yy00.tmp": b"",
            f".checkpoint_latest.{live.pid}.qq11ww22.tmp.pth": b"being written by a live process",
            f".checkpoint_latest.{os.getpid()}.qq11ww22.tmp.pth": b"this process's",
            "checkpoint_best.pth": b"a finished checkpoint",
            "notes.tmp": b"not ours",
        }
        for name, data in files.items():
            with open(os.path.join(fold, name), "wb") as f:
                f.write(data)
        trainer.on_train_start()
        left = {n for n in os.listdir(fold) if n in files}
        assert left == {f".checkpoint_latest.{live.pid}.qq11ww22.tmp.pth",
                        f".checkpoint_latest.{os.getpid()}.qq11ww22.tmp.pth", "checkpoint_best.pth", "notes.tmp"}
    finally:
        live.kill()
        live.wait()


def test_a_temporary_file_whose_pid_was_given_to_a_later_process_is_removed(tmp_path):
    """pid and start time: a process that started after the file last changed cannot have written it."""
    from nnunet_missingmod.atomic_io import remove_stale_temporaries
    name = ".checkpoint_best.{}.k9k9k9k9.tmp.pth"
    placeholder = tmp_path / "placeholder"
    placeholder.write_bytes(b"partial")
    time.sleep(2.5)  # the file's ctime is now well before the process below starts
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        from nnunet_missingmod.atomic_io import process_is_gone, process_start_time
        assert process_start_time(later.pid) is not None
        changed = placeholder.stat().st_ctime
        assert process_is_gone(later.pid, active_at=changed)  # started after the file changed: not its writer
        assert not process_is_gone(later.pid, active_at=time.time())
        assert not process_is_gone(later.pid, started=process_start_time(later.pid))
        (tmp_path / name.format(later.pid)).write_bytes(b"being written")  # written by 'later' (as far as we know)
        assert remove_stale_temporaries(str(tmp_path)) == []
    finally:
        later.kill()
        later.wait()
    assert process_is_gone(later.pid)
    assert remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / name.format(later.pid))]
