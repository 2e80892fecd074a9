"""Phantom generator: a forced tumour kind (held-out sets with a known share of cases without enhancing tumour)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from nnunet_missingmod.conversion.phantom import TUMOUR_KINDS, generate_case, write_phantom_dataset
from nnunet_missingmod.errors import MissingModError

SPACING = 8.0


def test_forced_no_enhancing_has_no_et_in_tissues_and_label():
    for seed in range(3):
        case = generate_case(seed, SPACING, "brats2021", kind="no_enhancing")
        assert case.kind == "no_enhancing"
        assert not case.tissues["ET"].any()
        assert not (case.label == 4).any()  # brats2021: ET = 4
        assert case.tissues["NET"].any()  # still a tumour


def test_forcing_the_drawn_kind_changes_nothing_and_another_kind_keeps_the_core():
    for seed in range(3):
        free = generate_case(seed, SPACING, "brats2021")
        same = generate_case(seed, SPACING, "brats2021", kind=free.kind)
        for modality, image in free.images.items():
            np.testing.assert_array_equal(same.images[modality], image)
        np.testing.assert_array_equal(same.label, free.label)
        other = next(k for k in TUMOUR_KINDS if k != free.kind)
        forced = generate_case(seed, SPACING, "brats2021", kind=other)
        assert forced.kind == other
        # the same tumour core (centre, size and shape are drawn before the kind is used)
        core = lambda c: c.tissues["NCR"] | c.tissues["NET"] | c.tissues["ET"]  # noqa: E731
        np.testing.assert_array_equal(core(forced), core(free))


def test_writer_takes_one_kind_per_case(tmp_path):
    kinds = ["no_enhancing", None, "classic"]
    cases = write_phantom_dataset(tmp_path / "src", 3, "brats2021", spacing=SPACING, seed=3, progress=False,
                                  kinds=kinds)
    written = list(cases.values())
    assert written[0].kind == "no_enhancing" and written[2].kind == "classic"
    seg = next((tmp_path / "src").glob("*/*_seg.nii.gz"))
    assert nib.load(seg).get_fdata().max() > 0
    first = sorted((tmp_path / "src").glob("*/*_seg.nii.gz"))[0]
    assert not (np.asarray(nib.load(first).dataobj) == 4).any()


@pytest.mark.parametrize("kinds, message", [(["classic"], "need one per case"),
                                            (["classic", "huge"], "must be one of")])
def test_writer_refuses_bad_kinds(tmp_path, kinds, message):
    with pytest.raises(MissingModError, match=message):
        write_phantom_dataset(tmp_path / "src", 2, "brats2021", spacing=SPACING, progress=False, kinds=kinds)
    assert not (tmp_path / "src").exists()


def test_generate_case_refuses_an_unknown_kind():
    with pytest.raises(MissingModError, match="no_enhancing"):
        generate_case(0, SPACING, kind="no_et")
