"""Which sequences does each case of an input folder have?

Two layouts are understood:

* nnU-Net raw: ``CASE_0000.nii.gz`` ... in one folder, any of them absent; the model's ``channel_names`` say which
  modality each channel index is.
* BraTS: one folder per case (or files side by side) named ``<case>_t1/_t1ce/_t2/_flair`` (2018-2022, FeTS 2022) or
  ``<case>-t1n/-t1c/-t2w/-t2f`` (2023+), ``.nii`` or ``.nii.gz``; segmentation files are ignored.

A problem with one case (an unknown channel index, two files for one sequence) is recorded on that case, so the
other cases still run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import ALIASES, ModalitySubset
from nnunet_missingmod.nifti_checks import broken_link_reason

_NIFTI = r"\.nii(?:\.gz)?"
_BRATS_SUFFIX = re.compile(r"^(?P<case>.+?)[_-](?P<seq>[A-Za-z0-9]+)" + _NIFTI + "$")
_SEGMENTATION_WORDS = ("seg", "label", "labels", "mask")


@dataclass(frozen=True)
class CaseFiles:
    """One case: the file of each modality it will be predicted from (canonical name → path), and a problem if it
    has one. Never changed after discovery: :func:`restrict_to` returns a new one."""
    case_id: str
    files: Mapping[str, str] = field(default_factory=dict)
    error: Optional[str] = None
    requested: Optional[ModalitySubset] = None
    """The ``--modalities`` subset the case was restricted to (``None``: all of its files are used)."""
    excluded: Mapping[str, str] = field(default_factory=dict)
    """Files that exist but were left out because ``requested`` does not name their modality."""

    @property
    def available(self) -> Optional[ModalitySubset]:
        """The modalities that have a file (``None`` if none has)."""
        return ModalitySubset.from_modalities(self.files) if self.files else None


class _FoundCase:
    """A case while its folder is being read (files are added one by one; the first problem is kept)."""

    def __init__(self, case_id: str):
        self.case_id, self.files, self.error = case_id, {}, None

    def add(self, modality: str, path: Path) -> None:
        if modality in self.files:
            self.error = self.error or (f"case {self.case_id}: two files for {modality}: "
                                        f"{Path(self.files[modality]).name} and {path.name}")
        else:
            self.files[modality] = str(path)

    def frozen(self) -> CaseFiles:
        return CaseFiles(self.case_id, dict(self.files), self.error)


def _raw_layout_pattern(file_ending: str) -> re.Pattern:
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(file_ending) + "$")


def _brats_modality(file_name: str) -> Optional[tuple]:
    match = _BRATS_SUFFIX.match(file_name)
    if not match or match["seq"].lower() in _SEGMENTATION_WORDS:
        return None
    key = match["seq"].lower()
    return (match["case"], ALIASES[key]) if key in ALIASES else None


def _named_file(path: Path) -> bool:
    """A file, or a name that cannot be opened (a broken symbolic link): the reader then fails naming it, so that
    an unreadable file is an error for its case, never a missing sequence (``is_file`` is False for a broken link)."""
    return path.is_file() or broken_link_reason(str(path)) is not None


def discover_cases(input_folder: str, channel_modalities: Sequence[str], file_ending: str = ".nii.gz") \
        -> List[CaseFiles]:
    """Cases of ``input_folder`` in either layout, sorted by case id. Raises :class:`MissingModError` if the folder
    does not exist or holds no recognisable image file."""
    folder = Path(input_folder)
    if not folder.is_dir():
        raise MissingModError(f"input folder {input_folder} does not exist")
    raw_pattern = _raw_layout_pattern(file_ending)
    cases: Dict[str, _FoundCase] = {}

    def case_named(case_id: str) -> _FoundCase:
        return cases.setdefault(case_id, _FoundCase(case_id))

    for path in sorted(p for p in folder.iterdir() if _named_file(p)):
        raw = raw_pattern.match(path.name)
        if raw:
            case, channel = case_named(raw["case"]), int(raw["channel"])
            if channel >= len(channel_modalities):
                case.error = case.error or (
                    f"case {case.case_id}: unknown channel index _{channel:04d} in {path.name}; the model has "
                    f"{len(channel_modalities)} channels ({', '.join(channel_modalities)} = _0000.."
                    f"_{len(channel_modalities) - 1:04d})")
            else:
                case.add(channel_modalities[channel], path)
            continue
        brats = _brats_modality(path.name)
        if brats:
            case_named(brats[0]).add(brats[1], path)
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        for path in sorted(p for p in sub.iterdir() if _named_file(p)):
            brats = _brats_modality(path.name)
            if brats:
                case_named(sub.name).add(brats[1], path)
    if not cases:
        raise MissingModError(
            f"no input images in {input_folder}: expected nnU-Net raw files (CASE_0000{file_ending} ...) or BraTS "
            f"files (CASE_t1/_t1ce/_t2/_flair or -t1n/-t1c/-t2w/-t2f .nii.gz, optionally one folder per case)")
    return [cases[k].frozen() for k in sorted(cases)]


def cases_from_lists(list_of_lists: Sequence[Sequence[Optional[str]]], channel_modalities: Sequence[str]) \
        -> List[CaseFiles]:
    """nnU-Net's list-of-lists input (one file per channel, in channel order), with ``None`` for a missing channel.
    The case id is the file name of the first present file without its ``_XXXX`` channel suffix and ending."""
    cases = []
    for files in list_of_lists:
        if len(files) != len(channel_modalities):
            raise MissingModError(f"expected {len(channel_modalities)} entries (one per channel "
                                  f"{', '.join(channel_modalities)}, None if missing), got {list(files)}")
        present = {m: str(f) for m, f in zip(channel_modalities, files) if f is not None}
        if not present:
            raise MissingModError("a case with no file at all: at least one sequence is needed")
        first = Path(next(iter(present.values()))).name
        case_id = re.sub(r"(_\d{4})?" + _NIFTI + "$", "", first)
        cases.append(CaseFiles(case_id, present))
    return cases


def restrict_to(case: CaseFiles, requested: Optional[ModalitySubset]) -> CaseFiles:
    """The case with only the files of ``requested`` (``None``: the case as it is); the files left out are kept in
    :attr:`CaseFiles.excluded`, so that the sidecar and error messages can name them."""
    if requested is None:
        return case
    return replace(case, requested=requested,
                   files={m: f for m, f in case.files.items() if m in requested.modalities},
                   excluded={m: f for m, f in case.files.items() if m not in requested.modalities})
