"""``predict --modalities ""`` is refused with one clear line (exit 2), not read as "all four sequences"."""
import pytest

from nnunet_missingmod.cli import main


@pytest.mark.parametrize("value", ["", " ", ","])
def test_empty_modalities_is_refused(tmp_path, capsys, value):
    (tmp_path / "in").mkdir()
    code = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "model"),
                 "--modalities", value])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "empty modality subset" in lines[0], err
    assert not (tmp_path / "out").exists()  # refused before anything is written
