"""Phantom generator: real anatomy, MRI-like contrast cues, determinism and the source layouts."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from nnunet_missingmod.conversion.formats import FORMAT_KEYS, get_format
from nnunet_missingmod.conversion.phantom import anatomy, generate_case, write_phantom_dataset
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES

SEEDS = range(24)


@pytest.fixture(scope="module")
def cases():
    return [generate_case(s, 6.0, "brats2021") for s in SEEDS]


def _surrounding_wm(case, iterations: int = 4) -> np.ndarray:
    tumour = np.zeros(case.label.shape, dtype=bool)
    for mask in case.tissues.values():
        tumour |= mask
    return binary_dilation(tumour, iterations=iterations) & (case.fractions["WM"] > 0.8) & ~tumour


def _mean(image: np.ndarray, mask: np.ndarray) -> float:
    assert mask.sum() > 0
    return float(image[mask].mean())


def test_anatomy_grid_at_6mm():
    anat = anatomy(6.0)
    assert anat.shape == (33, 39, 32)
    assert 0.2 < anat.brain.mean() < 0.6
    total = anat.gm + anat.wm + anat.csf
    assert np.allclose(total[anat.brain], 1.0, atol=1e-5)
    assert np.all(total[~anat.brain] == 0)
    np.testing.assert_allclose(anat.affine[:3, :3], np.eye(3) * 6.0)


def test_enhancing_tumour_bright_only_on_t1ce(cases):
    with_et = [c for c in cases if c.tissues["ET"].any()]
    assert len(with_et) >= 10
    for c in with_et:
        wm = _surrounding_wm(c)
        assert _mean(c.images["T1ce"], c.tissues["ET"]) > 1.2 * _mean(c.images["T1ce"], wm)
        assert _mean(c.images["T1"], c.tissues["ET"]) < 1.05 * _mean(c.images["T1"], wm)


def test_oedema_brightest_on_flair_and_csf_cues(cases):
    for c in cases:
        gm, wm, csf = (c.fractions[t] > 0.7 for t in ("GM", "WM", "CSF"))
        flair, t2 = c.images["FLAIR"], c.images["T2"]
        assert _mean(flair, c.tissues["ED"]) > _mean(flair, gm)
        assert _mean(flair, c.tissues["ED"]) > _mean(flair, wm)
        assert _mean(t2, csf) > _mean(t2, wm)
        assert _mean(flair, csf) < _mean(flair, wm)
        if c.tissues["NCR"].any():  # necrosis: dark on T1ce, bright on T2
            assert _mean(c.images["T1ce"], c.tissues["NCR"]) < _mean(c.images["T1ce"], wm)
            assert _mean(t2, c.tissues["NCR"]) > _mean(t2, wm)


def test_background_is_zero_and_labels_inside_brain(cases):
    brain = anatomy(6.0).brain
    for c in cases[:5]:
        for image in c.images.values():
            assert image.dtype == np.float32
            assert np.all(image[~brain] == 0) and image[brain].mean() > 0
        assert np.all(c.label[~brain] == 0)
        assert set(np.unique(c.label)) <= {0, 1, 2, 4}


def test_case_variety_over_seeds(cases):
    kinds = {c.kind for c in cases}
    assert kinds == {"classic", "no_necrosis", "no_enhancing"}
    assert any(not c.tissues["NCR"].any() for c in cases)
    assert any(not c.tissues["ET"].any() for c in cases)
    assert any(c.tissues["NCR"].any() and c.tissues["ET"].any() for c in cases)
    assert all(c.tissues["ED"].any() for c in cases)


def test_deterministic_per_seed():
    a, b, c = generate_case(7), generate_case(7), generate_case(8)
    for m in MODALITIES:
        np.testing.assert_array_equal(a.images[m], b.images[m])
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.images["T1"], c.images["T1"])


def test_label_values_follow_the_format():
    for key, allowed in (("brats2023", {0, 1, 2, 3}), ("msd", {0, 1, 2, 3}), ("brats2024", {0, 1, 2, 3, 4})):
        values = set()
        for seed in range(6):
            case = generate_case(seed, 6.0, key, with_rc=True if key == "brats2024" else None)
            values |= set(np.unique(case.label).tolist())
        assert values <= allowed
        assert 2 in values and 1 in values
    rc_case = generate_case(0, 6.0, "brats2024", with_rc=True)
    assert rc_case.tissues["RC"].any() and (rc_case.label == 4).any()
    msd_case = generate_case(0, 6.0, "msd")  # MSD: 1 edema, 2 non-enhancing, 3 enhancing
    assert np.array_equal(msd_case.label == 1, msd_case.tissues["ED"])
    with pytest.raises(MissingModError):
        generate_case(0, 6.0, "brats2021", with_rc=True)


@pytest.mark.parametrize("key", FORMAT_KEYS)
def test_writer_layout(tmp_path, key):
    fmt = get_format(key)
    out = tmp_path / key
    cases = write_phantom_dataset(out, 2, key, n_unlabelled=1, progress=False)
    assert len(cases) == 3
    if fmt.is_msd:
        meta = json.loads((out / "dataset.json").read_text())
        assert meta["modality"] == {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
        assert meta["numTraining"] == 2 and len(meta["test"]) == 1
        first = sorted((out / "imagesTr").iterdir())[0]
        img = nib.load(first)
        assert img.shape[3] == 4
        case = cases[first.name[:-7]]
        np.testing.assert_array_equal(np.asarray(img.dataobj[..., 0]), case.images["FLAIR"])
        np.testing.assert_array_equal(np.asarray(img.dataobj[..., 2]), case.images["T1ce"])
        return
    case_id = next(iter(cases))
    pattern = f"**/{case_id}/{case_id}{fmt.separator}{fmt.official_suffix('T1ce')}.nii.gz"
    t1ce = list(out.glob(pattern))
    assert len(t1ce) == 1
    img = nib.load(t1ce[0])
    np.testing.assert_allclose(img.affine, anatomy(6.0).affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), cases[case_id].images["T1ce"])
    if fmt.group_dirs:
        assert {p.name for p in out.iterdir()} <= {"HGG", "LGG"}
    for csv_name in fmt.partitioning_csvs:
        assert (out / csv_name).read_text().startswith("Subject_ID,Partition_ID")


def test_writer_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(MissingModError, match="not empty"):
        write_phantom_dataset(tmp_path, 1, progress=False)


def test_cli_phantom(tmp_path):
    from nnunet_missingmod.cli import main

    assert main(["phantom", str(tmp_path / "p"), "-n", "1", "--layout", "brats2023", "--seed", "3"]) == 0
    assert (tmp_path / "p" / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-t2f.nii.gz").is_file()
