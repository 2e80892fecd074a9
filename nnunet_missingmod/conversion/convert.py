"""Convert a BraTS / FeTS / MSD source folder into one canonical nnU-Net raw dataset.

Steps: discover the cases (rules from :mod:`.formats`; files named like another format are reported as such), choose
the held-out test cases (``--test-cases``), check them from their headers (all four sequences present,
same geometry within a case), then build the whole dataset in a hidden temporary sibling folder under
``$nnUNet_raw`` and rename it into place. Label values are checked while the labels are remapped; any error removes
the temporary folder, so a failed run leaves nothing behind. The source is only read.

Reruns: the dataset folder holds ``conversion_report.json`` with a fingerprint of the inputs (format, options,
source file paths, sizes and modification times). A rerun with the same fingerprint is a no-op; a different one is
refused, as is a dataset ID already used under another name.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_missingmod.conversion.formats import FORMATS, DatasetFormat, dataset_json_labels, get_format
from nnunet_missingmod.conversion.labels import to_nnunet_labels
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.atomic_io import (
    DiskFullError, check_writable_folder, claim_lock, disk_full_reported, human_size, lock_is_held, process_is_gone,
    release_lock)
from nnunet_missingmod.nifti_checks import (
    GEOMETRY_ATOL, NIFTI_ENDINGS, broken_link_reason, error_reason, read_label_map, read_nifti_data)
from nnunet_missingmod.modalities import MODALITIES, canonical_modality

FILE_ENDING = ".nii.gz"
REPORT_NAME = "conversion_report.json"
MAX_LISTED_PROBLEMS = 20


# ---------------------------------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class ImageSource:
    """One source image: a 3-D file, or channel ``channel`` of a 4-D file (MSD)."""

    path: Path
    channel: Optional[int] = None


@dataclass
class SourceCase:
    case_id: str
    images: Dict[str, Optional[ImageSource]]
    """Canonical modality -> source, ``None`` where the sequence is missing."""
    seg: Optional[Path]
    expected_names: Dict[str, str] = field(default_factory=dict)
    """Canonical modality -> expected file (for error messages)."""
    unrecognised: Tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        return self.seg is not None

    @property
    def missing(self) -> Tuple[str, ...]:
        return tuple(m for m in MODALITIES if self.images.get(m) is None)


def _visible(entries: Iterable[Path]) -> List[Path]:
    # Skips hidden files such as the '._BRATS_001.nii.gz' macOS resource forks shipped in the MSD tarball.
    return sorted(p for p in entries if not p.name.startswith("."))


def _nifti_files(folder: Path) -> List[Path]:
    """NIfTI files of ``folder``, broken symbolic links included: a named file that cannot be read is an error
    (:func:`~nnunet_missingmod.nifti_checks.check_nifti_data`), never a missing sequence."""
    return [p for p in _visible(folder.iterdir())
            if (p.is_file() or broken_link_reason(str(p))) and p.name.lower().endswith(NIFTI_ENDINGS)]


def _case_folders(fmt: DatasetFormat, source: Path) -> List[Path]:
    """Folders holding one case each: sub-folders of ``source`` (or of its HGG/LGG groups) with NIfTI files."""
    groups = {g.lower() for g in fmt.group_dirs}
    folders = []
    for sub in (p for p in _visible(source.iterdir()) if p.is_dir()):
        if sub.name.lower() in groups:
            folders += [p for p in _visible(sub.iterdir()) if p.is_dir() and _nifti_files(p)]
        elif _nifti_files(sub):
            folders.append(sub)
    return folders


def _file_pattern(case_id: str, suffixes: Sequence[str]) -> "re.Pattern[str]":
    alternatives = "|".join(re.escape(s) for s in suffixes)
    return re.compile(rf"^{re.escape(case_id)}[-_]({alternatives})\.nii(\.gz)?$", re.IGNORECASE)


def _single_match(case_id: str, what: str, matches: List[Path]) -> Optional[Path]:
    if len(matches) > 1:
        raise MissingModError(f"case {case_id}: several files for {what}: {', '.join(p.name for p in matches)}; "
                              f"keep one")
    return matches[0] if matches else None


def _case_from_folder(fmt: DatasetFormat, folder: Path) -> SourceCase:
    case_id = folder.name
    files = _nifti_files(folder)
    images, expected, used = {}, {}, set()
    for modality in MODALITIES:
        pattern = _file_pattern(case_id, fmt.suffixes[modality])
        match = _single_match(case_id, modality, [f for f in files if pattern.match(f.name)])
        images[modality] = ImageSource(match) if match else None
        expected[modality] = str(folder / f"{case_id}{fmt.separator}{fmt.official_suffix(modality)}{FILE_ENDING}")
        used.add(match)
    seg_pattern = _file_pattern(case_id, (fmt.seg_suffix,))
    seg_matches = [f for f in files if seg_pattern.match(f.name)]
    known_seg = fmt.known_seg_names.get(case_id)
    seg_matches += [f for f in files if known_seg and f.name == known_seg]
    seg = _single_match(case_id, "the segmentation", seg_matches)
    used.add(seg)
    unrecognised = tuple(f.name for f in files if f not in used)
    return SourceCase(case_id, images, seg, expected, unrecognised)


def _msd_channel_order(fmt: DatasetFormat, source: Path) -> Tuple[str, ...]:
    """Modality of each channel of the 4-D images: from the source dataset.json 'modality' if there is one."""
    dataset_json = source / "dataset.json"
    if not dataset_json.is_file():
        return fmt.msd_channels
    try:
        modality = json.loads(dataset_json.read_text())["modality"]
        order = tuple(canonical_modality(modality[str(i)]) for i in range(len(modality)))
    except (KeyError, ValueError, TypeError) as e:
        raise MissingModError(f"{str(dataset_json)!r}: cannot read the channel order from its 'modality' "
                              f"entry ({e})") from None
    if sorted(order) != sorted(MODALITIES):
        raise MissingModError(f"{str(dataset_json)!r}: 'modality' {modality} must name each of {MODALITIES} once")
    return order


def _msd_cases(fmt: DatasetFormat, source: Path) -> List[SourceCase]:
    order = _msd_channel_order(fmt, source)
    cases = []
    for images_dir, labelled in (("imagesTr", True), ("imagesTs", False)):
        folder = source / images_dir
        if not folder.is_dir():
            continue
        for image in _nifti_files(folder):
            case_id = re.sub(r"\.nii(\.gz)?$", "", image.name, flags=re.IGNORECASE)
            seg = None
            if labelled:
                seg = source / "labelsTr" / image.name
                if not seg.is_file():
                    raise MissingModError(f"case {case_id}: label file {str(seg)!r} is missing for "
                                          f"{str(image)!r}")
            images = {m: ImageSource(image, order.index(m)) for m in MODALITIES}
            cases.append(SourceCase(case_id, images, seg, {m: str(image) for m in MODALITIES}))
    labels_dir = source / "labelsTr"
    if labels_dir.is_dir():
        orphans = [p.name for p in _nifti_files(labels_dir) if not (source / "imagesTr" / p.name).is_file()]
        if orphans:
            raise MissingModError(f"label file(s) without an image in imagesTr: {', '.join(orphans[:10])}")
    return cases


def discover_source_cases(fmt: DatasetFormat, source: Path) -> List[SourceCase]:
    """All cases of ``source`` in format ``fmt``, sorted by case id. Raises if there are none."""
    if not source.is_dir():
        raise MissingModError(f"source folder {str(source)!r} does not exist or is not a folder")
    cases = _msd_cases(fmt, source) if fmt.is_msd else [_case_from_folder(fmt, d) for d in _case_folders(fmt, source)]
    if not cases:
        layout = ("imagesTr/, labelsTr/ (and imagesTs/) with 4-D NIfTI images" if fmt.is_msd else
                  f"one folder per case, e.g. {fmt.case_name.format(index=fmt.first_index)}/"
                  + (f" (possibly inside {'/'.join(fmt.group_dirs)})" if fmt.group_dirs else ""))
        raise MissingModError(f"no {fmt.key} cases found in {str(source)!r}; expected {layout}")
    ids = [c.case_id for c in cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise MissingModError(f"case id(s) found twice in {str(source)!r}: {', '.join(duplicates[:10])}")
    return sorted(cases, key=lambda c: c.case_id)


def other_format_hint(fmt: DatasetFormat, source: Path, cases: Sequence[SourceCase], dataset_id: int) -> Optional[str]:
    """When sequences are missing under ``fmt``'s file names but every case is complete under another format's
    (say 2021 files given as brats2023), the message that names that format; ``None`` otherwise."""
    if fmt.is_msd or not any(c.missing for c in cases):
        return None
    own_names = {fmt.official_suffix(m).lower() for m in MODALITIES}
    complete_here = sum(not c.missing for c in cases)
    candidates = []
    for other in FORMATS.values():
        other_names = {s.lower() for suffixes in other.suffixes.values() for s in suffixes}
        if other.is_msd or own_names & other_names:  # same naming (or accepts it): it would find no more files
            continue
        try:
            other_cases = discover_source_cases(other, source)
        except MissingModError:
            continue
        if all(not c.missing for c in other_cases) and len(other_cases) > complete_here:
            candidates.append(other)
    if not candidates:
        return None
    # Among formats with the same file names, prefer the one whose case names match (BraTS2021_00000 -> brats2021).
    best = next((f for f in candidates if all(f.names_case(c.case_id) for c in cases)), candidates[0])
    same_names = [f.key for f in candidates if f is not best and f.naming_example() == best.naming_example()]
    return (f"these files look like {best.key} (files named {best.naming_example()}), not {fmt.key} "
            f"({fmt.naming_example()}); use: nnunet-missingmod convert {best.key} {source} {dataset_id}"
            + (f" (or {', '.join(same_names)}: same file names)" if same_names else ""))


def held_out_case_ids(cases: Sequence[SourceCase], n_test: int) -> List[str]:
    """The ``n_test`` labelled cases held out as a test set: those whose SHA-256 of the case id sorts first. The
    choice depends on nothing but the case ids (not on the order of the files, the machine or a random state)."""
    labelled = [c.case_id for c in cases if c.labelled]
    if n_test < 0 or (n_test > 0 and n_test >= len(labelled)):
        raise MissingModError(f"--test-cases {n_test}: the source has {len(labelled)} labelled case(s); hold out "
                              f"between 0 and {max(len(labelled) - 1, 0)} so that at least one is left for training")
    return sorted(sorted(labelled, key=lambda c: hashlib.sha256(c.encode()).hexdigest())[:n_test])


# ------------------------------------------------------------------------------------------------------ checks
@dataclass(frozen=True)
class Geometry:
    shape: Tuple[int, ...]
    spacing: Tuple[float, ...]
    origin: Tuple[float, ...]
    direction: Tuple[float, ...]
    channels: int = 1

    def matches(self, other: "Geometry") -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, rtol=0, atol=GEOMETRY_ATOL)
                and np.allclose(self.origin, other.origin, rtol=0, atol=GEOMETRY_ATOL)
                and np.allclose(self.direction, other.direction, rtol=0, atol=GEOMETRY_ATOL))

    def describe(self) -> str:
        return (f"shape {self.shape}, spacing {tuple(round(s, 4) for s in self.spacing)}, "
                f"origin {tuple(round(o, 3) for o in self.origin)}")


def read_geometry(path: Path) -> Geometry:
    """3-D geometry from the header only (the 4th axis of a 4-D image is reported as ``channels``)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise MissingModError(f"cannot read image header of {str(path)!r}: {error_reason(e)}") from None
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim not in (3, 4):
        raise MissingModError(f"{str(path)!r} is {dim}-D; expected a 3-D image")
    direction = np.asarray(reader.GetDirection()).reshape(dim, dim)[:3, :3]
    return Geometry(tuple(size[:3]), tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]),
                    tuple(direction.ravel()), size[3] if dim == 4 else 1)


@dataclass
class CaseCheck:
    """What checking one case found (:func:`_check_case`)."""
    problems: List[str] = field(default_factory=list)
    geometry: Optional[Geometry] = None
    """The geometry its files share (that of most of them when one differs); zero images get it."""
    blank: List[str] = field(default_factory=list)
    """Sequences whose image is all zero: converted as they are, with a warning."""


def _check_case(case: SourceCase, allow_missing: bool) -> CaseCheck:
    """Problems of one case (missing sequences, unreadable files, geometry mismatches), its geometry and its all-zero
    sequences."""
    check = CaseCheck()
    problems = check.problems
    if case.missing and (not allow_missing or len(case.missing) == len(MODALITIES)):
        for m in case.missing:
            problems.append(f"case {case.case_id}: {m} is missing (expected {case.expected_names[m]!r})")
    if not case.labelled and case.unrecognised:
        # Most likely a misnamed segmentation, which would silently turn the case into an unlabelled one.
        problems.append(f"case {case.case_id}: no segmentation file but unrecognised file(s) "
                        f"{', '.join(case.unrecognised)}; rename or remove them")
    if len(case.missing) == len(MODALITIES):
        return check
    sources: Dict[Path, Tuple[str, Optional[int]]] = {}  # path -> role; an MSD 4-D file holds all four, read once
    for modality, source in case.images.items():
        if source is not None:
            sources.setdefault(source.path, ("image" if source.channel is not None else modality, source.channel))
    if case.seg is not None:
        sources[case.seg] = ("segmentation", None)
    geometries: Dict[Tuple[str, Path], Geometry] = {}  # (role, file) -> its geometry, in the order of the files
    for path, (name, channel) in sources.items():
        try:  # header checks cannot see a truncated file or NaN voxels, and SimpleITK reads both silently
            data = read_nifti_data(str(path), f"case {case.case_id}")
        except MissingModError as e:
            problems.append(str(e))
            continue
        check.blank += _blank_sequences(case, path, name, channel, data)
        del data
        geometry = read_geometry(path)
        expected_channels = 1 if channel is None else len(MODALITIES)
        if geometry.channels != expected_channels:
            problems.append(f"case {case.case_id}: {name} file {str(path)!r} has {geometry.channels} channel(s); "
                            f"expected {'a 3-D image' if channel is None else f'a 4-D image with {expected_channels}'}")
        geometries[(name, path)] = geometry
    check.geometry, mismatches = _shared_geometry(geometries)
    problems += [f"case {case.case_id}: {m}" for m in mismatches]
    return check


def _blank_sequences(case: SourceCase, path: Path, name: str, channel: Optional[int], data: np.ndarray) -> List[str]:
    """The sequences of ``path`` (one, or each channel of an MSD 4-D image) whose voxels are all zero."""
    if name == "segmentation":
        return []
    if channel is None:
        return [name] if data.size and not np.any(data) else []
    return [m for m, source in case.images.items()
            if source is not None and source.path == path and data.ndim == 4 and source.channel < data.shape[3]
            and not np.any(data[..., source.channel])]


def _shared_geometry(geometries: Dict[Tuple[str, Path], Geometry]) -> Tuple[Optional[Geometry], List[str]]:
    """The geometry of a case's files and the messages about those that differ. With three or more files the
    odd one out is the file that disagrees with most of the others (a wrong T1 is named, not the three files
    that agree); two files that differ are both named, as is every file when no geometry is shared by most."""
    groups: List[List[Tuple[str, Path]]] = []  # files sharing a geometry, in the order first seen
    for key, geometry in geometries.items():
        group = next((g for g in groups if geometries[g[0]].matches(geometry)), None)
        if group is None:
            groups.append([key])
        else:
            group.append(key)
    if not groups:
        return None, []
    if len(groups) == 1:
        return geometries[groups[0][0]], []
    largest = max(groups, key=len)
    if len(largest) * 2 > len(geometries):  # a strict majority: the others are the odd ones out
        shared = geometries[largest[0]]
        agreeing = ", ".join(role for role, _ in largest)
        return shared, [f"geometry of {_file_label(key)} ({geometries[key].describe()}) differs from that of the "
                        f"other files ({agreeing}: {shared.describe()})" for group in groups if group is not largest
                        for key in group]
    described = "; ".join(f"{_file_label(key)}: {geometries[key].describe()}" for key in geometries)
    return geometries[groups[0][0]], [f"the files do not share one geometry ({described})"]


def _file_label(key: Tuple[str, Path]) -> str:
    role, path = key
    return f"{role} file {str(path)!r}"


@dataclass
class CheckedCases:
    """What :func:`check_cases` found in cases that can be converted."""
    geometries: Dict[str, Geometry]
    """Each case's geometry (used for the zero images of missing sequences)."""
    blank_sequences: Dict[str, List[str]]
    """Case -> sequences whose image is all zero (converted as they are; the command warns)."""


def check_cases(cases: Sequence[SourceCase], allow_missing: bool, progress: bool = True) -> CheckedCases:
    """Check every case from its headers and voxels; raise one :class:`MissingModError` listing all problems."""
    from tqdm import tqdm

    problems, geometries, blank = [], {}, {}
    for case in tqdm(cases, desc="checking cases", disable=not progress):
        check = _check_case(case, allow_missing)
        problems += check.problems
        geometries[case.case_id] = check.geometry
        if check.blank:
            blank[case.case_id] = check.blank
    if problems:
        shown = problems[:MAX_LISTED_PROBLEMS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        hint = ("" if allow_missing or not any(" is missing " in p for p in problems) else
                "\n(use --allow-missing to convert incomplete cases with zero images for absent sequences)")
        raise MissingModError(f"{len(problems)} problem(s) in the source data:\n  " + "\n  ".join(shown) + more + hint)
    return CheckedCases(geometries, blank)


# ------------------------------------------------------------------------------------------------ target folder
def nnunet_raw_dir() -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise MissingModError("environment variable nnUNet_raw is not set; set it to nnU-Net's raw data folder "
                              "(export nnUNet_raw=/path/to/nnUNet_raw)")
    return Path(raw)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise MissingModError(f"dataset ID must be an integer from 1 to 999, got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name or ""):
        raise MissingModError(f"dataset name {name!r} must start with a letter or digit and contain only letters, "
                              f"digits, '_', '-' and '.'")
    return f"Dataset{dataset_id:03d}_{name}"


def _check_id_not_used_elsewhere(dataset_id: int, folder_name: str) -> None:
    """nnU-Net resolves IDs across raw, preprocessed and results: the ID must not name another dataset there."""
    prefix = f"Dataset{dataset_id:03d}_"
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        base = os.environ.get(variable)
        if not base or not os.path.isdir(base):
            continue
        others = sorted(p for p in os.listdir(base) if p.startswith(prefix) and p != folder_name)
        if others:
            raise MissingModError(f"dataset ID {dataset_id} is already used by {others[0]} in ${variable} "
                                  f"({base}); choose another ID or remove that dataset")


def _fingerprint(fmt: DatasetFormat, source: Path, cases: Sequence[SourceCase], options: Dict[str, bool]) -> str:
    """Hash of everything the output depends on, without reading the images."""
    files = sorted({str(s.path) for c in cases for s in c.images.values() if s}
                   | {str(c.seg) for c in cases if c.seg} | {str(p) for p in _sidecar_files(fmt, source)})
    entries = []
    for f in files:
        st = os.stat(f) if os.path.exists(f) else os.lstat(f)  # a broken link: check_cases names it
        entries.append((f, st.st_size, st.st_mtime_ns))
    payload = json.dumps({"format": fmt.key, "source": str(source), "options": options, "files": entries})
    return hashlib.sha256(payload.encode()).hexdigest()


def _existing_fingerprint(target: Path) -> Optional[str]:
    try:
        return json.loads((target / REPORT_NAME).read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def _conversion_lock(raw: Path, dataset_id: int) -> Path:
    """Held while dataset ``dataset_id`` is converted: a second ``convert`` of that ID refuses at once, and a
    temporary folder whose lock is free belongs to a run that is gone."""
    return raw / f".Dataset{dataset_id:03d}.convert.lock"


def _remove_stale_temp_folders(raw: Path, own_id: int) -> None:
    """Remove temporary folders (and lock files) of conversions that were killed, of any dataset ID: the folder's
    process is gone (pid and start time: a later process given the same pid started after the folder last
    changed), and no other live conversion holds its ID's lock (``own_id``'s is ours: no one else converts it)."""
    for stale in sorted(raw.glob(".Dataset*.tmp-*")):
        match = re.match(r"^\.Dataset(\d{3})_.*\.tmp-(\d+)$", stale.name)
        if not match or int(match[2]) == os.getpid() or not stale.is_dir():
            continue
        if int(match[1]) != own_id and lock_is_held(str(_conversion_lock(raw, int(match[1])))):
            continue  # a live conversion of that ID (perhaps on another machine)
        try:
            changed = stale.stat().st_ctime
        except FileNotFoundError:
            continue
        if process_is_gone(int(match[2]), active_at=changed):
            shutil.rmtree(stale, ignore_errors=True)
            print(f"convert: removed {stale}, left by a conversion that was killed (process {match[2]} is gone)")
    for lock in raw.glob(".Dataset*.convert.lock"):  # a killed run's; claim_lock copes with a lock file removed
        if not lock_is_held(str(lock)):
            lock.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------------ writing
def _sidecar_files(fmt: DatasetFormat, source: Path) -> List[Path]:
    return sorted({p for pattern in fmt.sidecar_globs for p in source.glob(pattern) if p.is_file()})


def _gzip_file(src: Path, dst: Path) -> None:
    # Byte-for-byte the same image, compressed; mtime=0 and no name keep reruns identical.
    with open(src, "rb") as fin, open(dst, "wb") as raw_out, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw_out, mtime=0) as fout:
        shutil.copyfileobj(fin, fout, length=1 << 22)


def _write_zero_image(geometry: Geometry, dst: Path) -> None:
    import SimpleITK as sitk

    image = sitk.Image([int(s) for s in geometry.shape], sitk.sitkUInt8)
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    sitk.WriteImage(image, str(dst), useCompression=True)


def _write_channel(source: ImageSource, dst: Path) -> None:
    """One channel of a 4-D image as a 3-D image with the 3-D part of its geometry (as nnU-Net's split_4d_nifti)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source.path))
    array = sitk.GetArrayFromImage(image)  # (C, z, y, x)
    channel = sitk.GetImageFromArray(array[source.channel])
    channel.SetSpacing(image.GetSpacing()[:3])
    channel.SetOrigin(image.GetOrigin()[:3])
    channel.SetDirection(tuple(np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3].ravel()))
    sitk.WriteImage(channel, str(dst), useCompression=True)


def _write_image(source: Optional[ImageSource], geometry: Geometry, dst: Path, link: bool) -> None:
    if source is None:
        _write_zero_image(geometry, dst)
    elif source.channel is not None:
        _write_channel(source, dst)
    elif source.path.name.lower().endswith(".nii.gz"):
        if link:
            os.symlink(os.path.abspath(source.path), dst)
        else:
            shutil.copyfile(source.path, dst)
    else:
        _gzip_file(source.path, dst)


def _write_label(fmt: DatasetFormat, case: SourceCase, keep_rc: bool, dst: Path) -> None:
    import SimpleITK as sitk

    values, image = read_label_map(str(case.seg), f"case {case.case_id}: segmentation")
    labels = to_nnunet_labels(values, fmt, keep_rc,
                              where=f"case {case.case_id}: segmentation {str(case.seg)!r}")
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    sitk.WriteImage(out, str(dst), useCompression=True)


def _write_case(fmt: DatasetFormat, case: SourceCase, geometry: Geometry, folder: Path, link: bool,
                keep_rc: bool, held_out: bool, needed_bytes: int) -> None:
    """Training cases go to imagesTr/labelsTr; held-out labelled cases to imagesTs/labelsTs (labels converted the
    same way); unlabelled cases to imagesTs. A full disk is one :class:`DiskFullError` naming the file."""
    training = case.labelled and not held_out
    images_dir = folder / ("imagesTr" if training else "imagesTs")
    for channel, modality in enumerate(MODALITIES):
        dst = images_dir / f"{case.case_id}_{channel:04d}{FILE_ENDING}"
        with disk_full_reported(str(dst), needed_bytes=needed_bytes):
            _write_image(case.images[modality], geometry, dst, link)
    if case.labelled:
        dst = folder / ("labelsTr" if training else "labelsTs") / f"{case.case_id}{FILE_ENDING}"
        with disk_full_reported(str(dst), needed_bytes=needed_bytes):
            _write_label(fmt, case, keep_rc, dst)


def _description(fmt: DatasetFormat, keep_rc: bool) -> str:
    original = "; ".join(f"{v} {n}" for v, n in sorted(fmt.labels.names.items()))
    text = (f"{fmt.title} converted by nnunet-missingmod. Channels T1, T1ce, T2, FLAIR. Original labels: {original}. "
            f"nnU-Net labels: 1 oedema/SNFH, 2 necrotic + non-enhancing core (NCR/NET/NETC), 3 enhancing tumour; "
            f"regions WT = 1+2+3, TC = 2+3, ET = 3.")
    if fmt.labels.has_rc:
        text += (" Resection cavity (RC) kept as label 4, its own region." if keep_rc else
                 " Resection cavity (RC) voxels are background, as the official scorer excludes RC from WT and TC.")
    return text


def _write_dataset(fmt: DatasetFormat, source: Path, cases: Sequence[SourceCase], geometries: Dict[str, Geometry],
                   folder: Path, dataset_name: str, link: bool, keep_rc: bool, held_out: Sequence[str], report: Dict,
                   progress: bool, needed_bytes: int) -> None:
    from tqdm import tqdm

    held_out = set(held_out)
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if held_out or any(not c.labelled for c in cases) else ()) \
            + (("labelsTs",) if held_out else ()):
        (folder / sub).mkdir(parents=True)
    for case in tqdm(cases, desc=f"converting {fmt.key}", disable=not progress):
        _write_case(fmt, case, geometries[case.case_id], folder, link, keep_rc, case.case_id in held_out,
                    needed_bytes)
    with disk_full_reported(str(folder / REPORT_NAME), needed_bytes=needed_bytes):
        _write_metadata(fmt, source, cases, folder, dataset_name, keep_rc, held_out, report)


def _write_metadata(fmt: DatasetFormat, source: Path, cases: Sequence[SourceCase], folder: Path, dataset_name: str,
                    keep_rc: bool, held_out: set, report: Dict) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    for sidecar in _sidecar_files(fmt, source):
        shutil.copyfile(sidecar, folder / sidecar.name)
    labels, regions_class_order = dataset_json_labels(fmt.labels, keep_rc)
    generate_dataset_json(
        str(folder), channel_names={i: m for i, m in enumerate(MODALITIES)}, labels=labels,
        num_training_cases=sum(c.labelled and c.case_id not in held_out for c in cases), file_ending=FILE_ENDING,
        regions_class_order=regions_class_order, dataset_name=dataset_name,
        reference=fmt.reference or None, description=_description(fmt, keep_rc),
        license="see the licence of the source dataset", converted_by="nnunet-missingmod convert",
        source_format=fmt.key)
    (folder / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")


@dataclass
class ConversionResult:
    dataset_dir: Path
    num_training: int
    num_test: int
    missing_sequences: Dict[str, List[str]]
    already_done: bool = False
    held_out: List[str] = field(default_factory=list)
    """Labelled cases written to imagesTs/labelsTs (``--test-cases``)."""
    blank_sequences: Dict[str, List[str]] = field(default_factory=dict)
    """Case -> sequences whose source image is all zero, converted as they are (worth a look: an export gone
    wrong?). Empty when the conversion was already done."""


def convert_dataset(format_key: str, source_dir: os.PathLike, dataset_id: int, name: Optional[str] = None,
                    link: bool = False, allow_missing: bool = False, keep_rc: bool = False, test_cases: int = 0,
                    progress: bool = True) -> ConversionResult:
    """Convert ``source_dir`` (layout ``format_key``) to ``$nnUNet_raw/Dataset{ID:03d}_{NAME}``.

    ``test_cases``: hold out this many labelled cases (chosen by :func:`held_out_case_ids`) in imagesTs/labelsTs.

    Raises :class:`MissingModError` for any problem with the input or the target; then nothing is written.
    """
    fmt = get_format(format_key)
    source = Path(source_dir).resolve()
    dataset_name = name or fmt.default_name
    folder_name = dataset_folder_name(dataset_id, dataset_name)
    if keep_rc:
        dataset_json_labels(fmt.labels, keep_rc)  # raises early for formats without RC
    raw = nnunet_raw_dir()
    check_writable_folder(str(raw), "$nnUNet_raw")  # before the lock file, the first thing written there
    lock = _conversion_lock(raw, dataset_id)
    claim_lock(str(lock), "convert", f"dataset ID {dataset_id} in {raw}")
    try:
        _remove_stale_temp_folders(raw, dataset_id)
        return _convert_locked(fmt, source, dataset_id, dataset_name, folder_name, raw, link, allow_missing, keep_rc,
                               test_cases, progress)
    finally:
        release_lock(str(lock))


def _convert_locked(fmt: DatasetFormat, source: Path, dataset_id: int, dataset_name: str, folder_name: str,
                    raw: Path, link: bool, allow_missing: bool, keep_rc: bool, test_cases: int,
                    progress: bool) -> ConversionResult:
    cases = discover_source_cases(fmt, source)
    hint = other_format_hint(fmt, source, cases, dataset_id)
    if hint:
        raise MissingModError(hint)
    held_out = held_out_case_ids(cases, test_cases)
    _check_id_not_used_elsewhere(dataset_id, folder_name)
    options = {"link": link, "allow_missing": allow_missing, "keep_rc": keep_rc, "test_cases": test_cases}
    fingerprint = _fingerprint(fmt, source, cases, options)
    target = raw / folder_name
    if target.exists():
        if _existing_fingerprint(target) != fingerprint:
            raise MissingModError(f"{str(target)!r} already exists with different content (another source, options "
                                  f"or modified files); remove it or choose another dataset ID")
        report = json.loads((target / REPORT_NAME).read_text())
        return ConversionResult(target, report["num_training"], report["num_test"], report["missing_sequences"],
                                already_done=True, held_out=report.get("held_out_test_cases", []))
    checked = check_cases(cases, allow_missing, progress)
    missing = {c.case_id: list(c.missing) for c in cases if c.missing}
    report = {"format": fmt.key, "source": str(source), "options": options, "fingerprint": fingerprint,
              "num_training": sum(c.labelled for c in cases) - len(held_out),
              "num_test": sum(not c.labelled for c in cases), "held_out_test_cases": held_out,
              "missing_sequences": missing,
              "note": "missing sequences were written as zero images with the case's geometry"}
    temp = raw / f".{folder_name}.tmp-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    try:
        _write_dataset(fmt, source, cases, checked.geometries, temp, dataset_name, link, keep_rc, held_out, report,
                       progress, _source_bytes(cases))
        try:
            os.rename(temp, target)
        except OSError:
            raise MissingModError(f"{str(target)!r} appeared while converting (another run?); "
                                  f"nothing was changed") from None
    except DiskFullError as e:
        raise DiskFullError(f"{e} (the converted dataset needs about {human_size(_source_bytes(cases))}, the size of "
                            f"its source images; the partial conversion was removed)") from None
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return ConversionResult(target, report["num_training"], report["num_test"], missing, held_out=held_out,
                            blank_sequences=checked.blank_sequences)


def _source_bytes(cases: Sequence[SourceCase]) -> int:
    """About what a converted dataset takes: its source images and labels (compressed as given)."""
    files = {s.path for c in cases for s in c.images.values() if s} | {c.seg for c in cases if c.seg}
    return sum(os.path.getsize(f) for f in files)
