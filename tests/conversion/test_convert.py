"""Dataset conversion of every format, on phantom data written in each source layout (real files, no mocks)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import plans_and_dataset_json

from nnunet_missingmod.cli import main
from nnunet_missingmod.conversion.convert import REPORT_NAME, convert_dataset
from nnunet_missingmod.conversion.formats import FORMAT_KEYS, NNUNET_LABEL_OF_TISSUE, get_format
from nnunet_missingmod.conversion.labels import convert_labels_back
from nnunet_missingmod.conversion.phantom import write_phantom_dataset
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES

REGION_LABELS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _expected_nnunet_labels(case, keep_rc: bool = False) -> np.ndarray:
    expected = np.zeros(case.label.shape, dtype=np.uint8)
    for tissue, mask in case.tissues.items():
        if tissue != "RC" or keep_rc:
            expected[mask] = NNUNET_LABEL_OF_TISSUE[tissue]
    return expected


def _source_files(root: Path, name: str):
    return list(root.rglob(name))


def _assert_nothing_written(raw: Path):
    assert list(raw.iterdir()) == []


def _phantom(tmp_path: Path, key: str, n: int = 3, **kwargs):
    source = tmp_path / f"src_{key}"
    return source, write_phantom_dataset(source, n, key, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------ every format
@pytest.mark.parametrize("key", FORMAT_KEYS)
def test_convert_every_format(tmp_path, raw, key):
    fmt = get_format(key)
    source, cases = _phantom(tmp_path, key, n=3, n_unlabelled=1)
    result = convert_dataset(key, source, 7, progress=False)
    dataset = raw / f"Dataset007_{fmt.default_name}"
    assert result.dataset_dir == dataset and result.num_training == 3 and result.num_test == 1

    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert meta["labels"] == {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3],
                              "enhancing tumor": [3]}
    assert meta["regions_class_order"] == [1, 2, 3]
    assert meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"

    for i, (case_id, case) in enumerate(cases.items()):
        folder = "imagesTr" if i < 3 else "imagesTs"
        for channel, modality in enumerate(MODALITIES):  # canonical channel order, whatever the source order
            np.testing.assert_array_equal(_array(dataset / folder / f"{case_id}_{channel:04d}.nii.gz"),
                                          case.images[modality])
        if i >= 3:
            assert not (dataset / "labelsTr" / f"{case_id}.nii.gz").exists()
            continue
        labels = _array(dataset / "labelsTr" / f"{case_id}.nii.gz")
        np.testing.assert_array_equal(labels, _expected_nnunet_labels(case))
        for region, nnunet_values in REGION_LABELS.items():  # our regions == the format's official regions
            official = np.isin(case.label, fmt.labels.region_values(region))
            np.testing.assert_array_equal(np.isin(labels, nnunet_values), official)
    for csv_name in fmt.partitioning_csvs:  # FeTS partitioning kept alongside
        assert (dataset / csv_name).read_bytes() == (source / csv_name).read_bytes()

    # labels-back: the training labels as "predictions" give back the original segmentation
    out = tmp_path / "submission"
    written = convert_labels_back(key, dataset / "labelsTr", out, progress=False)
    assert len(written) == 3
    for case_id, case in list(cases.items())[:3]:
        back = _array(out / f"{case_id}.nii.gz")
        original = case.label.copy()
        if fmt.labels.has_rc:
            original[original == fmt.labels.values["RC"]] = 0  # RC is background unless --keep-rc
        np.testing.assert_array_equal(back, original)


def test_brats2018_hgg_and_lgg(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2018", n=6)
    assert (source / "HGG").is_dir() and (source / "LGG").is_dir()
    result = convert_dataset("brats2018", source, 18, progress=False)
    converted = {p.name[:-7] for p in (result.dataset_dir / "labelsTr").iterdir()}
    assert converted == set(cases)


def test_brats2019_nii_files_become_nii_gz(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2019", n=2, extension=".nii")
    assert _source_files(source, "*_t1.nii")
    result = convert_dataset("brats2019", source, 19, progress=False)
    case_id, case = next(iter(cases.items()))
    np.testing.assert_array_equal(_array(result.dataset_dir / "imagesTr" / f"{case_id}_0003.nii.gz"),
                                  case.images["FLAIR"])
    assert all(p.name.endswith(".nii.gz") for p in result.dataset_dir.rglob("*.nii*"))


def test_brats2020_case_355_segmentation_name(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2020", n=3, first_index=354)
    assert (source / "BraTS20_Training_355" / "W39_1998.09.19_Segm.nii").is_file()
    result = convert_dataset("brats2020", source, 20, progress=False)
    assert result.num_training == 3
    np.testing.assert_array_equal(_array(result.dataset_dir / "labelsTr" / "BraTS20_Training_355.nii.gz"),
                                  _expected_nnunet_labels(cases["BraTS20_Training_355"]))


def test_misnamed_segmentation_is_reported_for_other_formats(tmp_path, raw):
    source, _ = _phantom(tmp_path, "brats2020", n=2, first_index=355)
    for case_dir in source.iterdir():  # make it look like 2021 data with the same stray file
        case_dir.rename(source / case_dir.name)
    with pytest.raises(MissingModError, match="W39_1998.09.19_Segm.nii"):
        convert_dataset("brats2021", source, 21, progress=False)
    _assert_nothing_written(raw)


def test_brats2024_keep_rc(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2024", n=4)
    assert any((c.label == 4).any() for c in cases.values())
    result = convert_dataset("brats2024", source, 24, keep_rc=True, progress=False)
    meta = json.loads((result.dataset_dir / "dataset.json").read_text())
    assert meta["labels"]["resection cavity"] == [4]
    assert meta["regions_class_order"] == [1, 2, 3, 4]
    out = tmp_path / "back"
    convert_labels_back("brats2024", result.dataset_dir / "labelsTr", out, progress=False)
    for case_id, case in cases.items():
        np.testing.assert_array_equal(_array(result.dataset_dir / "labelsTr" / f"{case_id}.nii.gz"),
                                      _expected_nnunet_labels(case, keep_rc=True))
        np.testing.assert_array_equal(_array(out / f"{case_id}.nii.gz"), case.label)
    with pytest.raises(MissingModError, match="keep-rc"):
        convert_dataset("brats2021", source, 25, keep_rc=True, progress=False)


def test_link_symlinks_images_and_writes_labels(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    result = convert_dataset("brats2021", source, 31, link=True, progress=False)
    case_id = next(iter(cases))
    image = result.dataset_dir / "imagesTr" / f"{case_id}_0001.nii.gz"
    assert image.is_symlink() and Path(os.readlink(image)) == (source / case_id / f"{case_id}_t1ce.nii.gz")
    assert not (result.dataset_dir / "labelsTr" / f"{case_id}.nii.gz").is_symlink()


# ------------------------------------------------------------------------------------------------- bad inputs
def test_missing_sequence_error_and_allow_missing(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    case_id = next(iter(cases))
    missing = source / case_id / f"{case_id}_t1ce.nii.gz"
    missing.unlink()
    with pytest.raises(MissingModError, match=f"case {case_id}: T1ce is missing.*{missing.name}"):
        convert_dataset("brats2021", source, 41, progress=False)
    _assert_nothing_written(raw)

    result = convert_dataset("brats2021", source, 41, allow_missing=True, progress=False)
    zero = nib.load(str(result.dataset_dir / "imagesTr" / f"{case_id}_0001.nii.gz"))
    present = nib.load(str(result.dataset_dir / "imagesTr" / f"{case_id}_0000.nii.gz"))
    assert zero.shape == present.shape and not np.asarray(zero.dataobj).any()
    np.testing.assert_allclose(zero.affine, present.affine, atol=1e-4)
    report = json.loads((result.dataset_dir / REPORT_NAME).read_text())
    assert report["missing_sequences"] == {case_id: ["T1ce"]}
    assert result.missing_sequences == {case_id: ["T1ce"]}


def test_mismatched_geometry(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2023", n=2)
    case_id = list(cases)[1]
    path = source / case_id / f"{case_id}-t2w.nii.gz"
    affine = np.diag([5.0, 6.0, 6.0, 1.0])
    nib.save(nib.Nifti1Image(cases[case_id].images["T2"], affine), str(path))
    with pytest.raises(MissingModError, match=f"case {case_id}: geometry of T2 file .*{path.name}.*spacing"):
        convert_dataset("brats2023", source, 42, progress=False)
    _assert_nothing_written(raw)


@pytest.mark.parametrize("damage", ["truncated segmentation", "truncated image", "nan image"])
def test_truncated_or_nan_source_files(tmp_path, raw, damage):
    """SimpleITK reads a truncated .nii.gz and NaN voxels without complaint; the converter must not."""
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    case_id = list(cases)[0]
    if damage == "nan image":
        path = source / case_id / f"{case_id}_flair.nii.gz"
        image = nib.load(str(path))
        data = np.asarray(image.dataobj).astype(np.float32)
        data[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(data, image.affine), str(path))
        message = f"case {case_id}: .*{path.name} has 1 NaN/Inf voxels"
    else:
        path = source / case_id / f"{case_id}_{'seg' if 'segmentation' in damage else 't1'}.nii.gz"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        message = f"case {case_id}: cannot read .*{path.name} \\(truncated or corrupt\\?\\)"
    with pytest.raises(MissingModError, match=message):
        convert_dataset("brats2021", source, 42, progress=False)
    _assert_nothing_written(raw)


@pytest.mark.parametrize("key, link", [("brats2021", False), ("brats2023", True), ("msd", False)])
def test_source_is_never_modified(tmp_path, raw, key, link):
    import hashlib
    source, _ = _phantom(tmp_path, key, n=2)

    def snapshot():
        return {str(p.relative_to(source)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
                for p in sorted(source.rglob("*")) if p.is_file()}

    before = snapshot()
    convert_dataset(key, source, 42, link=link, progress=False)
    convert_dataset(key, source, 42, link=link, progress=False)  # idempotent rerun
    assert snapshot() == before


def test_unexpected_label_value(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2021", n=3)
    case_id = list(cases)[2]
    seg = source / case_id / f"{case_id}_seg.nii.gz"
    label = cases[case_id].label.copy()
    label[0, 0, 0] = 3  # BraTS 2021 has no label 3
    nib.save(nib.Nifti1Image(label, nib.load(str(seg)).affine), str(seg))
    with pytest.raises(MissingModError, match=rf"case {case_id}: segmentation .*{seg.name}.* value\(s\) 3"):
        convert_dataset("brats2021", source, 43, progress=False)
    _assert_nothing_written(raw)


def test_empty_source_folder(tmp_path, raw):
    (tmp_path / "empty").mkdir()
    for key in ("brats2021", "msd"):
        with pytest.raises(MissingModError, match="no .* cases found"):
            convert_dataset(key, tmp_path / "empty", 44, progress=False)
    with pytest.raises(MissingModError, match="does not exist"):
        convert_dataset("brats2021", tmp_path / "nowhere", 44, progress=False)
    _assert_nothing_written(raw)


def test_existing_target_dataset(tmp_path, raw):
    source, _ = _phantom(tmp_path, "brats2021", n=2)
    first = convert_dataset("brats2021", source, 45, progress=False)
    before = {p: p.stat().st_mtime_ns for p in first.dataset_dir.rglob("*")}
    again = convert_dataset("brats2021", source, 45, progress=False)  # identical rerun: a no-op
    assert again.already_done and again.num_training == 2
    assert {p: p.stat().st_mtime_ns for p in first.dataset_dir.rglob("*")} == before

    other, _ = _phantom(tmp_path, "brats2023", n=1)
    with pytest.raises(MissingModError, match="already exists with different content"):
        convert_dataset("brats2021", source, 45, link=True, progress=False)
    with pytest.raises(MissingModError, match="already used by Dataset045_BraTS2021"):
        convert_dataset("brats2023", other, 45, progress=False)
    assert {p: p.stat().st_mtime_ns for p in first.dataset_dir.rglob("*")} == before
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset045_BraTS2021"]


def test_nnunet_raw_must_be_set(tmp_path, monkeypatch):
    source, _ = _phantom(tmp_path, "brats2021", n=1)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(MissingModError, match="nnUNet_raw is not set"):
        convert_dataset("brats2021", source, 46, progress=False)


def test_bad_id_name_and_format(tmp_path, raw):
    source, _ = _phantom(tmp_path, "brats2021", n=1)
    with pytest.raises(MissingModError, match="1 to 999"):
        convert_dataset("brats2021", source, 1000, progress=False)
    with pytest.raises(MissingModError, match="dataset name"):
        convert_dataset("brats2021", source, 47, name="a/b", progress=False)
    with pytest.raises(MissingModError, match="unknown dataset format"):
        convert_dataset("brats2017", source, 47, progress=False)
    _assert_nothing_written(raw)


def test_labels_back_errors(tmp_path, raw):
    preds = tmp_path / "preds"
    preds.mkdir()
    with pytest.raises(MissingModError, match="no .nii.gz or .nii predictions"):
        convert_labels_back("brats2021", preds, tmp_path / "out", progress=False)
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 5, dtype=np.uint8), np.eye(4)), str(preds / "c.nii.gz"))
    with pytest.raises(MissingModError, match=r"c.nii.gz.* value\(s\) 5"):
        convert_labels_back("brats2021", preds, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*"))
    with pytest.raises(MissingModError, match="must differ"):
        convert_labels_back("brats2021", preds, preds, progress=False)


def test_cli_convert_and_labels_back(tmp_path, raw, capsys):
    source, cases = _phantom(tmp_path, "msd", n=2)
    assert main(["convert", "msd", str(source), "8", "--name", "Phantom"]) == 0
    assert "2 training case(s)" in capsys.readouterr().out
    assert main(["convert", "msd", str(source), "8", "--name", "Phantom"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    out = tmp_path / "back"
    assert main(["labels-back", "msd", str(raw / "Dataset008_Phantom" / "labelsTr"), str(out)]) == 0
    for case_id, case in cases.items():
        np.testing.assert_array_equal(_array(out / f"{case_id}.nii.gz"), case.label)
    capsys.readouterr()
    assert main(["convert", "brats2021", str(tmp_path / "nowhere"), "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnunet-missingmod convert: error:") and "nowhere" in err and "\n" not in err


# ------------------------------------------------------------------------------------- user-facing friction
@pytest.mark.parametrize("given, actual", [("brats2023", "brats2021"), ("brats2021", "brats2023")])
def test_files_of_another_format_are_named_as_such(tmp_path, raw, capsys, given, actual):
    source, _ = _phantom(tmp_path, actual, n=2)
    with pytest.raises(MissingModError, match=f"these files look like {actual} .*not {given}.*"
                                              f"use: nnunet-missingmod convert {actual} "):
        convert_dataset(given, source, 12, progress=False)
    # --allow-missing would only turn every sequence into a zero image: the same message instead
    assert main(["convert", given, str(source), "12", "--allow-missing"]) == 2
    err = capsys.readouterr().err
    assert f"these files look like {actual}" in err and " is missing " not in err
    _assert_nothing_written(raw)


def test_really_missing_sequences_are_not_blamed_on_the_format(tmp_path, raw):
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    case_id = next(iter(cases))
    (source / case_id / f"{case_id}_flair.nii.gz").unlink()
    with pytest.raises(MissingModError) as error:
        convert_dataset("brats2021", source, 13, progress=False)
    assert "FLAIR is missing" in str(error.value) and "look like" not in str(error.value)


def test_brats2022_is_the_2021_layout_and_listed_everywhere(tmp_path, raw, capsys):
    assert "brats2022" in FORMAT_KEYS
    assert get_format("brats2022").labels == get_format("brats2021").labels
    assert get_format("brats2022").suffixes == get_format("brats2021").suffixes
    source, _ = _phantom(tmp_path, "brats2021", n=1)  # BraTS 2022 shipped the 2021 files
    assert convert_dataset("brats2022", source, 14, progress=False).num_training == 1
    for command in (["convert"], ["labels-back"], ["phantom"], ["score"], ["evaluate"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "brats2022" in capsys.readouterr().out, command


def _held_out_conversion(tmp_path, source, dataset_id, n_test):
    result = convert_dataset("brats2021", source, dataset_id, test_cases=n_test, progress=False)
    return result, json.loads((result.dataset_dir / REPORT_NAME).read_text())


def test_test_cases_are_held_out_with_converted_labels(tmp_path, raw, capsys):
    source, cases = _phantom(tmp_path, "brats2021", n=5, n_unlabelled=1)
    result, report = _held_out_conversion(tmp_path, source, 15, 2)
    dataset = result.dataset_dir
    held_out = result.held_out
    assert len(held_out) == 2 and report["held_out_test_cases"] == held_out and result.num_training == 3
    labelled_ids = list(cases)[:5]
    assert set(held_out) < set(labelled_ids)
    training = sorted(set(labelled_ids) - set(held_out))
    assert sorted(p.name[:-7] for p in (dataset / "labelsTr").iterdir()) == training
    assert sorted(p.name[:-7] for p in (dataset / "labelsTs").iterdir()) == sorted(held_out)
    assert sorted({p.name[:-12] for p in (dataset / "imagesTs").iterdir()}) == sorted(held_out + [list(cases)[5]])
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 3
    for case_id in held_out:  # converted to nnU-Net labels exactly like a training label
        np.testing.assert_array_equal(_array(dataset / "labelsTs" / f"{case_id}.nii.gz"),
                                      _expected_nnunet_labels(cases[case_id]))
        np.testing.assert_array_equal(_array(dataset / "imagesTs" / f"{case_id}_0003.nii.gz"),
                                      cases[case_id].images["FLAIR"])
    # deterministic: another run (another ID, another copy of the source) holds out the same cases
    copy = tmp_path / "copy"
    write_phantom_dataset(copy, 5, "brats2021", n_unlabelled=1, progress=False)
    assert _held_out_conversion(tmp_path, copy, 16, 2)[0].held_out == held_out
    assert main(["convert", "brats2021", str(source), "17", "--test-cases", "2"]) == 0
    assert "2 held-out labelled case(s) in imagesTs/labelsTs" in capsys.readouterr().out


@pytest.mark.parametrize("n_test", [5, -1])
def test_test_cases_must_leave_a_training_case(tmp_path, raw, n_test):
    source, _ = _phantom(tmp_path, "brats2021", n=5)
    with pytest.raises(MissingModError, match=f"--test-cases {n_test}: the source has 5 labelled case"):
        convert_dataset("brats2021", source, 18, test_cases=n_test, progress=False)
    _assert_nothing_written(raw)


def test_phantom_first_index_gives_distinct_case_ids(tmp_path):
    assert main(["phantom", str(tmp_path / "test"), "-n", "2", "--first-index", "1000", "--seed", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "test").iterdir()) == ["BraTS2021_01000", "BraTS2021_01001"]
    with pytest.raises(MissingModError, match="first case index"):
        write_phantom_dataset(tmp_path / "bad", 1, first_index=-1, progress=False)


# --------------------------------------------------------------------------------------- nnU-Net end to end
def test_brats2023_layout_converts_to_a_dataset_that_nnunets_integrity_check_accepts(tmp_path, raw):
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    source, _ = _phantom(tmp_path, "brats2023", n=3)
    result = convert_dataset("brats2023", source, 123, progress=False)
    verify_dataset_integrity(str(result.dataset_dir), num_processes=1)  # raises on any inconsistency


@pytest.mark.slow
def test_converted_dataset_plans_preprocesses_and_trains(nnunet_root, tiny_preprocessed, trained_dropout_model):
    """The session's dataset (tests/conftest.py: phantoms in the BraTS 2021 layout converted by our converter) went
    through ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` and ``nnUNetv2_train``."""
    plans, dataset_json = plans_and_dataset_json(nnunet_root)
    assert np.prod(plans["configurations"]["3d_fullres"]["patch_size"]) <= 40 ** 3
    assert dataset_json["channel_names"] == {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"}
    assert (trained_dropout_model / "fold_0" / "checkpoint_final.pth").is_file()


def test_msd_hidden_files_skipped_and_channel_count_checked(tmp_path, raw):
    source, cases = _phantom(tmp_path, "msd", n=2)
    (source / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"macOS resource fork")
    image = source / "imagesTr" / "BRATS_002.nii.gz"
    img = nib.load(str(image))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., :3], img.affine), str(image))
    with pytest.raises(MissingModError, match="case BRATS_002: .*BRATS_002.nii.gz.* 3 channel"):
        convert_dataset("msd", source, 51, progress=False)
    _assert_nothing_written(raw)


@pytest.mark.parametrize("broken", ["dangling", "loop"])
def test_broken_link_is_an_error_not_a_missing_sequence(tmp_path, raw, broken):
    """A dangling link is not a file (``is_file`` False) but it is named: the case has a T2 that cannot be read."""
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    case_id = list(cases)[0]
    t2 = source / case_id / f"{case_id}_t2.nii.gz"
    t2.unlink()
    os.symlink(source / "gone.nii.gz" if broken == "dangling" else t2, t2)
    for allow_missing in (False, True):
        with pytest.raises(MissingModError, match=rf"case {case_id}: .*{t2.name} is a broken symbolic link") as e:
            convert_dataset("brats2021", source, 44, allow_missing=allow_missing, progress=False)
        assert "T2 is missing" not in str(e.value)
        _assert_nothing_written(raw)


def test_values_that_become_inf_in_float32_are_rejected(tmp_path, raw):
    """float64 near 1e303 is finite in the file and Inf once nnU-Net reads it as float32: predict rejects such a
    file, so convert must too (the same check, nifti_checks.check_nifti_data)."""
    source, cases = _phantom(tmp_path, "brats2021", n=2)
    case_id = list(cases)[1]
    path = source / case_id / f"{case_id}_flair.nii.gz"
    image = nib.load(str(path))
    data = np.asarray(image.dataobj).astype(np.float64)
    data[3, 3, 3] = 1e303
    nib.save(nib.Nifti1Image(data, image.affine), str(path))
    with pytest.raises(MissingModError, match=rf"case {case_id}: .*{path.name} has 1 voxel\(s\) beyond the float32"):
        convert_dataset("brats2021", source, 45, progress=False)
    _assert_nothing_written(raw)
