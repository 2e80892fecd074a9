"""Which subsets a model was trained on comes from its checkpoints' ``missingmod_config`` (issue 32): a stock model,
or one of ours trained on the full set only, is not labelled robust, and each case says whether its subset was
trained."""
import json

import pytest
import torch

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.inference.case import ROBUST, CaseResult, PreparedCase
from nnunet_missingmod.inference.predictor import MissingModalityPredictor, trained_subsets_of_checkpoints
from nnunet_missingmod.modalities import FULL_SET, SUBSETS, parse_subset

NO_T1CE = parse_subset("T1,T2,FLAIR")


def checkpoint(path, trained_subsets=None):
    content = {"trainer_name": "x", "network_weights": {"w": torch.zeros(3)}}
    if trained_subsets is not None:
        content["missingmod_config"] = {"trained_subsets": [s.name for s in trained_subsets]}
    torch.save(content, path)
    return str(path)


def test_subsets_come_from_the_checkpoint(tmp_path):
    full_only = checkpoint(tmp_path / "full.pth", [FULL_SET])
    everything = checkpoint(tmp_path / "all.pth", SUBSETS)
    stock = checkpoint(tmp_path / "stock.pth")
    assert trained_subsets_of_checkpoints([everything]) == SUBSETS
    assert trained_subsets_of_checkpoints([full_only]) == (FULL_SET,)
    assert trained_subsets_of_checkpoints([stock]) == (FULL_SET,)  # no missingmod_config: stock nnU-Net
    assert trained_subsets_of_checkpoints([everything], trained_by_our_trainer=False) == (FULL_SET,)
    assert trained_subsets_of_checkpoints([everything, full_only]) == (FULL_SET,)  # every fold must have it
    bad = tmp_path / "bad.pth"
    torch.save({"missingmod_config": {"trained_subsets": ["T9"]}}, bad)
    with pytest.raises(MissingModError, match="bad.pth: bad trained_subsets"):
        trained_subsets_of_checkpoints([str(bad)])


class Exports:
    def __init__(self):
        self.failed_results = []

    def failed(self, result):
        self.failed_results.append(result)


def predictor(trained_subsets):
    p = MissingModalityPredictor.__new__(MissingModalityPredictor)
    p.trained_subsets = tuple(trained_subsets)
    p.trained_for_missing_modalities = any(not s.is_full for s in trained_subsets)
    p.trainer_name, p.model_folder, p.full_set_predictor = "FullSetTrainer", "/m", None
    p.dataset_json = {"file_ending": ".nii.gz"}
    return p


@pytest.mark.parametrize("trained, subset, warned, trained_for", [
    ((FULL_SET,), NO_T1CE, "without modality dropout", False),
    ((FULL_SET,), FULL_SET, None, True),
    (SUBSETS, NO_T1CE, None, True),
    ((FULL_SET, parse_subset("T1ce,FLAIR")), NO_T1CE, "was not trained on T1+T2+FLAIR", False),
])
def test_each_case_says_whether_its_subset_was_trained(tmp_path, trained, subset, warned, trained_for):
    p = predictor(trained)
    result = CaseResult("case", subset=subset.name, model=ROBUST, error="stop before the network")
    exports = Exports()
    p._predict_prepared(PreparedCase(result, None, None, subset), str(tmp_path), False, exports)
    assert exports.failed_results == [result]
    if warned:
        assert any(warned in w and "not trained for" in w for w in result.warnings), result.warnings
    else:
        assert not result.warnings
    p._write_sidecar(result, str(tmp_path))
    sidecar = json.loads((tmp_path / "case.modalities.json").read_text())
    assert sidecar["trained_for_subset"] is trained_for
    assert sidecar["trained_for_missing_modalities"] is (trained is SUBSETS or len(trained) > 1)


def test_initialisation_reads_the_checkpoints_it_loads(tmp_path, monkeypatch):
    """initialize_from_trained_model_folder passes the checkpoints of the folds nnU-Net loaded."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    for fold in (0, 1):
        (tmp_path / f"fold_{fold}").mkdir()
        checkpoint(tmp_path / f"fold_{fold}" / "checkpoint_final.pth", [FULL_SET])
    seen = {}
    monkeypatch.setattr(nnUNetPredictor, "initialize_from_trained_model_folder", lambda self, *a, **k: None)
    monkeypatch.setattr(MissingModalityPredictor, "_after_initialization",
                        lambda self, checkpoints=None: seen.setdefault("checkpoints", checkpoints))
    p = MissingModalityPredictor.__new__(MissingModalityPredictor)
    p.initialize_from_trained_model_folder(str(tmp_path), None)
    assert seen["checkpoints"] == [str(tmp_path / f"fold_{f}" / "checkpoint_final.pth") for f in (0, 1)]
    assert trained_subsets_of_checkpoints(seen["checkpoints"]) == (FULL_SET,)
