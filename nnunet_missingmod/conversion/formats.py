"""The one table of source dataset formats: file names, label conventions, regions and case-discovery rules.

Everything format-specific lives in :data:`FORMATS`; the converter (:mod:`.convert`), the label mapping
(:mod:`.labels`) and the phantom writers (:mod:`.phantom`) only read this table.

Tumour sub-regions are named with one internal vocabulary (:data:`TISSUES`): ``NCR`` necrosis, ``NET``
non-enhancing tumour core, ``ED`` oedema / SNFH, ``ET`` enhancing tumour and ``RC`` resection cavity. Each
:class:`LabelConvention` says which original label value each of them carries in a format; the converted dataset
uses one nnU-Net labelling for all formats (:data:`NNUNET_LABEL_OF_TISSUE`), nested so that regions work.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES, canonical_modality

TISSUES: Tuple[str, ...] = ("NCR", "NET", "ED", "ET", "RC")
"""Internal names of tumour sub-regions (RC only exists in BraTS 2024 post-treatment data)."""

# nnU-Net labels of every converted dataset, as in nnU-Net's Dataset137_BraTS21 converter: they nest
# (WT = {1,2,3} ⊃ TC = {2,3} ⊃ ET = {3}) so that sigmoid regions can be trained and painted back in order.
NNUNET_LABEL_OF_TISSUE: Mapping[str, int] = {"ED": 1, "NCR": 2, "NET": 2, "ET": 3, "RC": 4}
NNUNET_REGIONS: Mapping[str, Tuple[int, ...]] = {
    "whole tumor": (1, 2, 3), "tumor core": (2, 3), "enhancing tumor": (3,)}
RC_REGION_NAME = "resection cavity"
# Tissues that make up the official regions (RC is excluded from WT and TC, as the BraTS 2024 scorer does).
REGION_TISSUES: Mapping[str, Tuple[str, ...]] = {
    "WT": ("NCR", "NET", "ED", "ET"), "TC": ("NCR", "NET", "ET"), "ET": ("ET",)}


@dataclass(frozen=True)
class LabelConvention:
    """Original label values of one family of formats.

    ``values`` maps each tissue to its original label value (NCR and NET share one value in every convention
    since BraTS 2017); ``names`` gives the official name of each value for documentation.
    """

    key: str
    values: Mapping[str, int]
    names: Mapping[int, str]

    @property
    def label_values(self) -> Tuple[int, ...]:
        """All allowed original values, background 0 included, sorted."""
        return tuple(sorted({0, *self.values.values()}))

    @property
    def has_rc(self) -> bool:
        return "RC" in self.values

    def region_values(self, region: str) -> Tuple[int, ...]:
        """Original label values that make up an official region ``WT``, ``TC`` or ``ET``."""
        return tuple(sorted({self.values[t] for t in REGION_TISSUES[region] if t in self.values}))


LEGACY = LabelConvention(
    "brats-2017-2022", {"NCR": 1, "NET": 1, "ED": 2, "ET": 4},
    {1: "NCR/NET (necrotic and non-enhancing tumour core)", 2: "ED (peritumoural oedema)",
     4: "ET (enhancing tumour)"})
GLI2023 = LabelConvention(
    "brats-2023", {"NCR": 1, "NET": 1, "ED": 2, "ET": 3},
    {1: "NETC (non-enhancing tumour core)", 2: "SNFH (surrounding non-enhancing FLAIR hyperintensity)",
     3: "ET (enhancing tissue)"})
GLI2024 = LabelConvention(
    "brats-2024", {"NCR": 1, "NET": 1, "ED": 2, "ET": 3, "RC": 4},
    {**GLI2023.names, 4: "RC (resection cavity)"})
MSD = LabelConvention(
    "msd-task01", {"NCR": 2, "NET": 2, "ED": 1, "ET": 3},
    {1: "edema", 2: "non-enhancing tumor", 3: "enhancing tumour"})

_OLD_SUFFIXES = {"T1": ("t1",), "T1ce": ("t1ce",), "T2": ("t2",), "FLAIR": ("flair",)}
_NEW_SUFFIXES = {"T1": ("t1n",), "T1ce": ("t1c",), "T2": ("t2w",), "FLAIR": ("t2f",)}


@dataclass(frozen=True)
class DatasetFormat:
    """How one source format is laid out on disk and labelled.

    Case folders (``<case>/<case><sep><suffix>.nii[.gz]``) are the immediate sub-folders of the source folder, or of
    its ``group_dirs`` (HGG/LGG) where those exist. ``msd_channels`` marks the MSD layout instead: ``imagesTr``,
    ``labelsTr`` and ``imagesTs`` with one 4-D image per case whose channels hold these modalities, in order.
    """

    key: str
    default_name: str
    title: str
    labels: LabelConvention
    suffixes: Mapping[str, Tuple[str, ...]] = field(default_factory=lambda: dict(_OLD_SUFFIXES))
    """Canonical modality -> accepted file-name suffixes; the first is the official one (written by the phantom)."""
    seg_suffix: str = "seg"
    separator: str = "_"
    group_dirs: Tuple[str, ...] = ()
    known_seg_names: Mapping[str, str] = field(default_factory=dict)
    """Known misnamed segmentation files: case id -> file name found in that case's folder."""
    msd_channels: Tuple[str, ...] = ()
    sidecar_globs: Tuple[str, ...] = ("*.csv",)
    """Files at the top of the source folder copied alongside the converted dataset (FeTS partitioning CSVs...)."""
    partitioning_csvs: Tuple[str, ...] = ()
    """FeTS institution partitionings (``Subject_ID,Partition_ID``); only the phantom writes them."""
    case_name: str = "{index:05d}"
    """Phantom case id template, formatted with ``index``."""
    first_index: int = 0
    reference: str = ""

    @property
    def is_msd(self) -> bool:
        return bool(self.msd_channels)

    def official_suffix(self, modality: str) -> str:
        return self.suffixes[modality][0]

    def naming_example(self) -> str:
        """``<case>_t1, _t1ce, _t2, _flair``-style summary of the file names (for messages)."""
        if self.is_msd:
            return "imagesTr/<case>.nii.gz with four channels"
        return ", ".join(f"{self.separator}{self.official_suffix(m)}" for m in MODALITIES)

    def names_case(self, case_id: str) -> bool:
        """Whether ``case_id`` looks like one of this format's case names (its phantom template, any number)."""
        pattern = re.sub(r"\\\{index[^}]*\\\}", r"\\d+", re.escape(self.case_name))  # re.escape gives \{index:05d\}
        return re.fullmatch(pattern, case_id) is not None


FORMATS: Dict[str, DatasetFormat] = {f.key: f for f in (
    DatasetFormat("brats2018", "BraTS2018", "BraTS 2018 (HGG/LGG)", LEGACY, group_dirs=("HGG", "LGG"),
                  case_name="Brats18_PHA_{index:04d}_1", reference="https://www.med.upenn.edu/sbia/brats2018.html"),
    DatasetFormat("brats2019", "BraTS2019", "BraTS 2019 (HGG/LGG)", LEGACY, group_dirs=("HGG", "LGG"),
                  case_name="BraTS19_PHA_{index:04d}_1", reference="https://www.med.upenn.edu/cbica/brats2019/"),
    DatasetFormat("brats2020", "BraTS2020", "BraTS 2020", LEGACY,
                  known_seg_names={"BraTS20_Training_355": "W39_1998.09.19_Segm.nii"},
                  case_name="BraTS20_Training_{index:03d}", first_index=1,
                  reference="https://www.med.upenn.edu/cbica/brats2020/"),
    DatasetFormat("brats2021", "BraTS2021", "BraTS 2021 (RSNA-ASNR-MICCAI)", LEGACY,
                  case_name="BraTS2021_{index:05d}", reference="https://www.synapse.org/brats2021"),
    # BraTS 2022 (continuous evaluation) re-released the 2021 data: same files, case names and labels.
    DatasetFormat("brats2022", "BraTS2022", "BraTS 2022 (the BraTS 2021 data and layout)", LEGACY,
                  case_name="BraTS2021_{index:05d}", reference="https://www.synapse.org/brats2022"),
    DatasetFormat("fets2022", "FeTS2022", "FeTS 2021/2022", LEGACY,
                  partitioning_csvs=("partitioning_1.csv", "partitioning_2.csv"), case_name="FeTS2022_{index:05d}", reference="https://fets-ai.github.io/Challenge/"),
    DatasetFormat("brats2023", "BraTS2023", "BraTS 2023 GLI (also PED, SSA, MEN, MET naming)", GLI2023,
                  suffixes=_NEW_SUFFIXES, separator="-", case_name="BraTS-GLI-{index:05d}-000",
                  reference="https://www.synapse.org/brats2023"),
    DatasetFormat("brats2024", "BraTS2024", "BraTS 2024 GLI post-treatment", GLI2024,
                  suffixes=_NEW_SUFFIXES, separator="-", case_name="BraTS-GLI-{index:05d}-100",
                  reference="https://www.synapse.org/brats2024"),
    # FeTS 2024 reuses BraTS 2023/24 GLI data; its file naming is not verified, so both spellings are accepted.
    DatasetFormat("fets2024", "FeTS2024", "FeTS 2024 (BraTS 2023 GLI labels)", GLI2023,
                  suffixes={m: _NEW_SUFFIXES[m] + _OLD_SUFFIXES[m] for m in MODALITIES}, separator="-",
                  case_name="FeTS2024-{index:05d}-000", reference="https://www.synapse.org/fets2024"),
    DatasetFormat("msd", "BrainTumour", "Medical Segmentation Decathlon Task01_BrainTumour", MSD,
                  msd_channels=("FLAIR", "T1", "T1ce", "T2"), suffixes={}, case_name="BRATS_{index:03d}",
                  first_index=1, reference="http://medicaldecathlon.com/"),
)}
FORMAT_KEYS: Tuple[str, ...] = tuple(FORMATS)


def get_format(key: str) -> DatasetFormat:
    """The format named ``key`` (case-insensitive); raises :class:`MissingModError` listing the known ones."""
    fmt = FORMATS.get(str(key).strip().lower())
    if fmt is None:
        raise MissingModError(f"unknown dataset format {key!r}; expected one of {', '.join(FORMAT_KEYS)}")
    return fmt


def _check_table() -> None:
    """The table must agree with :mod:`nnunet_missingmod.modalities`: every suffix is an alias of its modality."""
    for fmt in FORMATS.values():
        for modality, suffixes in fmt.suffixes.items():
            assert all(canonical_modality(s) == modality for s in suffixes), (fmt.key, modality)
        assert [canonical_modality(m) for m in fmt.msd_channels] == list(fmt.msd_channels)
        assert fmt.is_msd or set(fmt.suffixes) == set(MODALITIES), fmt.key


_check_table()


def nnunet_label_of_value(convention: LabelConvention, keep_rc: bool) -> Dict[int, int]:
    """Original label value -> nnU-Net label. RC becomes background unless ``keep_rc``."""
    mapping = {0: 0}
    for tissue, value in convention.values.items():
        mapping[value] = NNUNET_LABEL_OF_TISSUE[tissue] if tissue != "RC" or keep_rc else 0
    return mapping


def original_value_of_label(convention: LabelConvention) -> Dict[int, int]:
    """nnU-Net label -> original label value (the inverse used by ``labels-back``; RC is mapped back if present)."""
    return {0: 0, **{NNUNET_LABEL_OF_TISSUE[t]: v for t, v in convention.values.items()}}


def dataset_json_labels(convention: LabelConvention, keep_rc: bool) -> Tuple[Dict[str, object], Tuple[int, ...]]:
    """``labels`` and ``regions_class_order`` for dataset.json.

    nnU-Net paints sigmoid regions in ``regions_class_order``: a voxel gets the label of the *last* region whose
    probability exceeds 0.5. WT -> 1, TC -> 2, ET -> 3 nest, so painting them in this order restores the labels.
    A kept RC region is disjoint from the tumour and painted last (label 4).
    """
    labels: Dict[str, object] = {"background": 0, **{k: list(v) for k, v in NNUNET_REGIONS.items()}}
    order = (1, 2, 3)
    if keep_rc:
        if not convention.has_rc:
            raise MissingModError(f"--keep-rc only applies to formats with a resection cavity label "
                                  f"({', '.join(f.key for f in FORMATS.values() if f.labels.has_rc)})")
        labels[RC_REGION_NAME] = [NNUNET_LABEL_OF_TISSUE["RC"]]
        order = order + (NNUNET_LABEL_OF_TISSUE["RC"],)
    return labels, order
