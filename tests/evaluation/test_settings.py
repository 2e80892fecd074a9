"""``score`` and ``evaluate`` read their command line once into frozen, typed settings."""
import dataclasses

import pytest

from nnunet_missingmod.cli import build_parser
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation.cli import score_settings_from_args
from nnunet_missingmod.evaluation.evaluate import settings_from_args
from nnunet_missingmod.modalities import parse_subset


def test_evaluate_settings_hold_parsed_values_and_are_frozen(tmp_path, model_folder):  # noqa: F811
    args = build_parser().parse_args(["evaluate", "-i", str(tmp_path), "-l", str(tmp_path), "-m", str(model_folder),
                                      "-f", "0", "--subsets", "t1c+flair;T2", "--disable_tta", "-np", "3",
                                      "--hd95-variant", "pooled", "-o", str(tmp_path / "out")])
    settings = settings_from_args(args)
    assert settings.model_folders == (str(model_folder),) and settings.folds == (0,)
    assert settings.subsets == (parse_subset("T2"), parse_subset("T1ce+FLAIR"))
    assert settings.use_mirroring is False and settings.device == "auto"
    assert (settings.scoring.num_processes, settings.scoring.hd95_variant) == (3, "pooled")
    assert settings.scoring.output == str(tmp_path / "out") and not settings.scoring.regions_given
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.scoring.num_processes = 1


def test_score_settings_name_defaults_to_the_prediction_folder_and_bad_values_are_usage_errors(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "my_model").mkdir()
    parse = build_parser().parse_args
    settings = score_settings_from_args(parse(["score", str(tmp_path / "gt"), str(tmp_path / "my_model") + "/",
                                               "--format", "msd", "-o", str(tmp_path / "out")]))
    assert settings.name == "my_model" and settings.subset is None
    assert settings.scoring.label_format == "msd" and settings.scoring.regions_given
    with pytest.raises(MissingModError, match="-np must be at least 1, got 0"):
        score_settings_from_args(parse(["score", str(tmp_path / "gt"), str(tmp_path / "my_model"), "-np", "0",
                                        "-o", str(tmp_path / "out")]))


def test_bootstrap_and_reference_flags_reach_the_report_settings(tmp_path):
    from nnunet_missingmod.evaluation.report import BootstrapSettings
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    parse = build_parser().parse_args
    base = ["score", str(tmp_path / "gt"), str(tmp_path / "pred"), "-o", str(tmp_path / "out")]
    assert score_settings_from_args(parse(base)).scoring.bootstrap == BootstrapSettings(10000, None)
    settings = score_settings_from_args(parse(base + ["--bootstrap", "500", "--reference", "stock"]))
    assert settings.scoring.bootstrap == BootstrapSettings(500, "stock")
    with pytest.raises(MissingModError, match="--bootstrap must be a whole number >= 0"):
        score_settings_from_args(parse(base + ["--bootstrap", "-1"]))


def test_reference_must_name_an_entry_of_the_evaluation():
    from nnunet_missingmod.evaluation.evaluate import check_reference, report_entries
    entries = report_entries(["robust", "stock"], full_set_model=True, et_rule=True)
    assert entries == ["robust", "stock", "robust+stock_routed", "robust_etRule", "stock_etRule"]
    check_reference(None, entries)
    check_reference("robust+stock_routed", entries)
    with pytest.raises(MissingModError, match="--reference 'other' is not one of the models evaluated"):
        check_reference("other", entries)
