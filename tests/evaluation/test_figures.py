"""Pictures of the segmentations: case choice, slice choice, colours by region, a real rendering read back."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
from fs_helpers import fill, small_filesystem
from matplotlib.image import imread

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.evaluation import figures
from nnunet_missingmod.evaluation.figures import (
    FigureRow, label_colours, parse_figure_count, render_case_figure, select_cases, tumour_slice)
from nnunet_missingmod.atomic_io import DiskFullError
from nnunet_missingmod.modalities import FULL_SET, MODALITIES

REGIONS = {"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}  # nnU-Net's region labels, as our converter writes them
RED, YELLOW, GREEN = (1, 0, 0), (1, 1, 0), (0, 1, 0)


def _records(dice_by_case, trainer="A", subset=FULL_SET.name, region="WT"):
    return [{"trainer": trainer, "case": case, "subset": subset, "n_modalities": 4, "region": region, "dice": d,
             "hd95": 1.0} for case, d in dice_by_case.items()]


def test_best_median_worst_by_the_first_models_full_set_wt_dice():
    records = (_records({"c1": 0.5, "c2": 0.9, "c3": 0.1, "c4": 0.7, "c5": 0.3})
               + _records({"c1": 1.0, "c3": 1.0}, region="ET")            # other regions do not count
               + _records({"c1": 0.0, "c2": 0.0}, subset="FLAIR")         # nor other subsets
               + _records({"c1": 0.1, "c2": 0.1, "c3": 0.99}, trainer="B"))  # nor other models
    assert select_cases(records, 3) == ["c2", "c1", "c3"]
    assert select_cases(records, "3") == ["c2", "c1", "c3"]
    assert select_cases(records, 1) == ["c1"]
    assert select_cases(records, 2) == ["c2", "c3"]
    assert select_cases(records, 0) == []
    assert select_cases(records, "all") == ["c2", "c4", "c1", "c5", "c3"]
    assert select_cases(records, 9) == ["c2", "c4", "c1", "c5", "c3"]
    assert select_cases(records, 3, trainer="B") == ["c3", "c1", "c2"]


def test_ties_are_ordered_by_case_name_and_nan_last():
    records = _records({"b": 0.8, "a": 0.8, "c": float("nan"), "d": 0.2})
    assert select_cases(records, "all") == ["a", "b", "d", "c"]
    assert select_cases(list(reversed(records)), "all") == ["a", "b", "d", "c"]


def test_without_a_full_set_the_mean_over_the_evaluated_subsets_ranks():
    records = _records({"x": 0.2, "y": 0.6}, subset="FLAIR") + _records({"x": 0.4, "y": 0.0}, subset="T1ce")
    assert select_cases(records, "all") == ["x", "y"]


@pytest.mark.parametrize("value", ["-1", "three", "2.5", ""])
def test_an_invalid_figure_count_is_refused_naming_it(value):
    with pytest.raises(MissingModError, match=f"--figures.*{value!r}"):
        parse_figure_count(value)
    assert parse_figure_count("ALL") == "all" and parse_figure_count("0") == 0


def test_the_slice_with_the_largest_tumour_area_is_chosen():
    labels = np.zeros((7, 10, 10), dtype=np.uint8)
    labels[2, 2:4, 2:4] = 2          # 4 voxels
    labels[5, 1:7, 1:3] = 1          # 12 voxels: largest
    labels[4, 0:10, 0:10] = 9        # a label in no region is not tumour
    assert tumour_slice(labels, (1, 2, 3)) == 5
    labels[3, 0:4, 0:3] = 3          # 12 voxels too: the first of equal slices
    assert tumour_slice(labels, (1, 2, 3)) == 3
    assert tumour_slice(np.zeros((7, 4, 4)), (1, 2, 3)) == 3  # no tumour: the middle slice


def test_colours_follow_region_membership_in_every_label_convention():
    by_colour = {c.colour: c.values for c in label_colours(REGIONS)}
    assert by_colour == {figures.BRATS_COLOURS[0][1]: (3,), figures.BRATS_COLOURS[1][1]: (2,),
                         figures.BRATS_COLOURS[2][1]: (1,)}
    brats2021 = {c.colour: c.values for c in label_colours({"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)})}
    assert brats2021 == {figures.BRATS_COLOURS[0][1]: (4,), figures.BRATS_COLOURS[1][1]: (1,),
                         figures.BRATS_COLOURS[2][1]: (2,)}
    per_label = label_colours({"NETC": (1,), "SNFH": (2,), "ET": (3,)})
    assert per_label[0].values == (3,) and per_label[0].colour == figures.BRATS_COLOURS[0][1]
    assert {c.values for c in per_label[1:]} == {(1,), (2,)}
    assert not {c.colour for c in per_label[1:]} & {c[1] for c in figures.BRATS_COLOURS}


# ------------------------------------------------------------------------------------------------ real rendering

def _write(path, array):
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return str(path)


def _case(tmp_path):
    """A 12 x 20 x 24 case: a brain box of noise, a tumour (oedema shell, core, enhancing centre) on slice 6."""
    rng = np.random.default_rng(0)
    shape = (12, 20, 24)
    z, y, x = np.indices(shape)
    brain = (y >= 2) & (y < 18) & (x >= 2) & (x < 22)
    images = {m: _write(tmp_path / f"case_{i:04d}.nii.gz", (brain * rng.normal(100 + 20 * i, 10, shape))
                        .astype(np.float32)) for i, m in enumerate(MODALITIES)}
    distance = np.sqrt((z - 6) ** 2 + (y - 10) ** 2 + (x - 12) ** 2)
    gt = np.select([distance <= 2, distance <= 4, distance <= 6], [3, 2, 1], 0).astype(np.uint8)
    oedema_only = np.where(gt > 0, 1, 0).astype(np.uint8)
    return images, gt, oedema_only


def _panel(picture, column, row=0):
    """The pixels of a panel, from the module's layout (a few pixels inside its border)."""
    top = (figures.TITLE_HEIGHT + figures.HEADER_HEIGHT + figures.ROW_LABEL_HEIGHT
           + row * (figures.ROW_LABEL_HEIGHT + figures.PANEL)) * figures.DPI
    left = (figures.MARGIN + column * figures.PANEL) * figures.DPI
    size = figures.PANEL * figures.DPI
    return picture[int(top) + 6:int(top + size) - 6, int(left) + 6:int(left + size) - 6, :3]


def _count(pixels, colour):
    return int(np.all(np.abs(pixels - np.array(colour)) < 0.25, axis=-1).sum())


def test_a_rendered_case_shows_each_region_in_its_colour(tmp_path):
    images, gt, oedema_only = _case(tmp_path)
    gt_file = _write(tmp_path / "gt.nii.gz", gt)
    full = _write(tmp_path / "full.nii.gz", gt)
    flair = _write(tmp_path / "flair.nii.gz", oedema_only)
    records = [{"trainer": "model A", "case": "case", "subset": s, "n_modalities": 4, "region": r, "dice": d,
                "hd95": 0.0} for s, d in ((FULL_SET.name, 1.0), ("FLAIR", 0.25)) for r in REGIONS]
    rows = [FigureRow("model A", "model A", {FULL_SET.name: full, "FLAIR": flair}),
            FigureRow("model B", "model B", {FULL_SET.name: flair})]
    out = tmp_path / "cases" / "case.png"
    out.parent.mkdir()
    notes = render_case_figure(str(out), "case", images, gt_file, rows, REGIONS, records)

    # T1ce+T2+FLAIR and T1ce+FLAIR were not evaluated: left out, with a note each
    assert len(notes) == 2 and "FLAIR+T1ce+T2" in notes[0] and "FLAIR+T1ce" in notes[1]
    picture = imread(str(out))
    columns = 4 + 1 + 2  # sequences, ground truth, full set, FLAIR
    assert picture.shape[:2] == figures.figure_pixels(2, columns, n_notes=2)
    sequence, truth, full_panel, flair_panel = (_panel(picture, c) for c in (0, 4, 5, 6))
    assert all(_count(truth, c) > 50 for c in (RED, YELLOW, GREEN))
    assert all(_count(full_panel, c) > 50 for c in (RED, YELLOW, GREEN))
    assert _count(flair_panel, GREEN) > 200 and _count(flair_panel, RED) == _count(flair_panel, YELLOW) == 0
    assert np.ptp(sequence) > 0.3 and _count(sequence, RED) == 0  # the grey image, windowed, no colour
    # the ET of the ground truth sits in the centre of its panel, and is red there
    h, w = truth.shape[:2]
    assert _count(truth[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5], RED) == 100
    # model B's row: only its full set was evaluated (oedema only), its FLAIR cell is left empty
    assert _count(_panel(picture, 5, row=1), RED) == 0 and _count(_panel(picture, 5, row=1), GREEN) > 200
    assert _count(_panel(picture, 6, row=1), GREEN) == 0


def test_a_case_whose_segmentation_has_another_geometry_is_refused_naming_the_file(tmp_path):
    images, gt, _ = _case(tmp_path)
    wrong = _write(tmp_path / "wrong.nii.gz", gt[:, :, :10])
    with pytest.raises(MissingModError, match="wrong.nii.gz"):
        render_case_figure(str(tmp_path / "case.png"), "case", images, _write(tmp_path / "gt.nii.gz", gt),
                           [FigureRow("m", "m", {FULL_SET.name: wrong})], REGIONS, [])
    assert not (tmp_path / "case.png").exists()


def test_a_failed_write_leaves_no_picture(tmp_path):
    images, gt, _ = _case(tmp_path)
    gt_file = _write(tmp_path / "gt.nii.gz", gt)
    with small_filesystem(tmp_path / "full", size_kb=256) as full:
        fill(full)
        with pytest.raises(DiskFullError, match="case.png"):
            render_case_figure(str(full / "case.png"), "case", images, gt_file,
                               [FigureRow("m", "m", {FULL_SET.name: gt_file})], REGIONS, [])
        assert sorted(os.listdir(full)) == ["filler"]


def test_pictures_of_an_earlier_run_are_removed_even_when_none_is_drawn(tmp_path):
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "old_case.png").write_bytes(b"earlier run")
    (tmp_path / "cases" / "notes.txt").write_text("the user's")
    written, notes = figures.write_case_figures(str(tmp_path), _records({"c1": 0.5}), 0, {}, {}, {"A": {}}, REGIONS,
                                                ".nii.gz", progress=False)
    assert written == notes == [] and sorted(os.listdir(tmp_path / "cases")) == ["notes.txt"]
