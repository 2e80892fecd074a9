"""Fixtures of the conversion tests."""
from pathlib import Path

import pytest


@pytest.fixture
def raw(tmp_path, monkeypatch) -> Path:
    """nnU-Net folders inside tmp_path; returns nnUNet_raw (created, empty)."""
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    return tmp_path / "nnUNet_raw"
