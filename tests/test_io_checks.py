"""Atomic writes of io_checks: a reader never sees a half-written file, and a failed write keeps the old one."""
import os
import stat

import pytest

from nnunet_missingmod.io_checks import atomic_output, atomic_write_bytes, atomic_write_text


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
