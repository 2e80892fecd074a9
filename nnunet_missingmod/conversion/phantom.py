"""Synthetic BraTS-like cases on real anatomy, in the layout of any supported format.

Anatomy: the ICBM152 2009a symmetric T1, GM and WM templates shipped inside nilearn's wheel (no download); CSF is
``clip(brain mask - GM - WM, 0, 1)``. Four contrasts are rendered from tissue fractions with the relative intensities
of :data:`INTENSITIES` (reference notes, data_and_metrics.md §1.3), per-case jitter of every class mean and of the
gain, a smooth multiplicative bias field, a low-amplitude texture, a Gaussian PSF and Rician noise. A tumour with
necrosis, a (sometimes incomplete) enhancing rim, non-enhancing core and WM-following oedema is inserted; some
cases have no necrosis or no enhancing tumour, and BraTS 2024 cases may have a resection cavity.

Cues kept on purpose: enhancing tumour is bright only on T1ce; oedema is brightest on FLAIR; CSF is bright on T2
and dark on FLAIR; necrosis is dark on T1/T1ce and bright on T2.

Template licence (required with anything derived from the ICBM152 templates):

    Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,
    McGill University. Permission to use, copy, modify, and distribute this software and its documentation for
    any purpose and without fee is hereby granted, provided that the above copyright notice appear in all copies.
    The authors and McGill University make no representations about the suitability of this software for any
    purpose. It is provided "as is" without express or implied warranty. The authors are not responsible for
    any data loss, equipment damage, property loss, or injury to subjects or patients resulting from the use or
    misuse of this software package.
"""
from __future__ import annotations

import csv
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_missingmod.conversion.formats import DatasetFormat, get_format
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.modalities import MODALITIES

DEFAULT_SPACING_MM = 6.0
TEMPLATE_ORIGIN_MM = (-98.0, -134.0, -72.0)  # voxel (0, 0, 0) of the 1 mm ICBM152 2009a templates

# Relative class means per sequence (columns T1, T1ce, T2, FLAIR). WM = 1 except on T2, where CSF = 1.
INTENSITIES: Dict[str, Tuple[float, float, float, float]] = {
    "WM": (1.00, 1.00, 0.35, 1.00),
    "GM": (0.72, 0.72, 0.52, 1.20),
    "CSF": (0.37, 0.38, 1.00, 0.30),
    "ED": (0.70, 0.70, 0.75, 1.85),
    "NET": (0.65, 0.65, 0.70, 1.65),
    "NCR": (0.42, 0.42, 0.90, 0.75),
    "ET": (0.75, 1.75, 0.65, 1.45),
    "RC": (0.37, 0.38, 1.00, 0.30),  # resection cavity: fluid, like CSF
}
TUMOUR_KINDS = ("classic", "no_necrosis", "no_enhancing")
_KIND_PROBABILITIES = (0.6, 0.2, 0.2)


# ------------------------------------------------------------------------------------------------------ anatomy
@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions on a grid of ``spacing`` mm (arrays are read-only and shared between cases)."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray  # bool
    spacing: float

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.brain.shape

    @property
    def affine(self) -> np.ndarray:
        affine = np.diag([self.spacing] * 3 + [1.0])
        affine[:3, 3] = TEMPLATE_ORIGIN_MM
        return affine


@functools.lru_cache(maxsize=1)
def _templates_1mm() -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ICBM152 2009a T1, GM and WM (1 mm, scaled to [0, 1]) from the files inside nilearn's wheel."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    return tuple(np.asarray(f(resolution=1).get_fdata(), dtype=np.float32)
                 for f in (load_mni152_template, load_mni152_gm_template, load_mni152_wm_template))


@functools.lru_cache(maxsize=8)
def anatomy(spacing: float = DEFAULT_SPACING_MM) -> Anatomy:
    """Template anatomy resampled to ``spacing`` mm (linear interpolation), cached per spacing."""
    from scipy.ndimage import zoom

    if not 0.5 <= spacing <= 12:
        raise MissingModError(f"phantom spacing must lie between 0.5 and 12 mm, got {spacing}")
    t1, gm, wm = (a if spacing == 1 else zoom(a, 1.0 / spacing, order=1) for a in _templates_1mm())
    brain = t1 > 0.2  # nilearn's load_mni152_brain_mask threshold
    gm, wm = np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain
    total = gm + wm
    scale = np.where(total > 1, 1.0 / np.maximum(total, 1e-6), 1.0)
    gm, wm = gm * scale, wm * scale
    csf = np.clip(brain - gm - wm, 0, 1)
    gm, wm, csf = (a.astype(np.float32) for a in (gm, wm, csf))
    for a in (gm, wm, csf, brain):
        a.setflags(write=False)
    return Anatomy(gm, wm, csf, brain, float(spacing))


# ------------------------------------------------------------------------------------------------------- tumour
def _random_unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _angular_field(rng: np.random.Generator, directions: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random function on the sphere (low-order harmonics), evaluated at unit ``directions`` (..., 3)."""
    linear = _random_unit_vectors(rng, 3)
    quadratic = _random_unit_vectors(rng, 3)
    field = np.zeros(directions.shape[:-1], dtype=np.float32)
    for a, v in zip(rng.uniform(-amplitude, amplitude, 3), linear):
        field += a * (directions @ v)
    for b, w in zip(rng.uniform(-amplitude, amplitude, 3), quadratic):
        field += b * ((directions @ w) ** 2 - 1.0 / 3.0)
    return field


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=max(sigma_vox, 0.5))
    return field / max(float(field.std()), 1e-6)


def _tumour_centre(rng: np.random.Generator, anat: Anatomy, depth_mm: np.ndarray, min_depth: float) -> np.ndarray:
    """A voxel in white matter at least ``min_depth`` mm from the brain edge (deepest voxel if none)."""
    candidates = np.argwhere((anat.wm > 0.5) & (depth_mm >= min_depth))
    if len(candidates) == 0:
        candidates = np.argwhere(depth_mm == depth_mm.max())
    return candidates[rng.integers(len(candidates))].astype(np.float32)


def _insert_tumour(rng: np.random.Generator, anat: Anatomy, with_rc: bool,
                   kind: Optional[str] = None) -> Tuple[Dict[str, np.ndarray], str]:
    """Boolean masks per tumour tissue (``NCR``, ``NET``, ``ED``, ``ET`` and ``RC``) and the tumour kind."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    sp = anat.spacing
    drawn = str(rng.choice(TUMOUR_KINDS, p=_KIND_PROBABILITIES))  # drawn even when forced: the rest stays the same
    kind = drawn if kind is None else kind
    # Sizes in mm, but at least a few voxels so that every sub-region survives coarse test grids.
    r0 = rng.uniform(max(10.0, 3.0 * sp), max(25.0, 4.5 * sp))
    rim = max(rng.uniform(2.0, 5.0), 1.0 * sp)
    depth = distance_transform_edt(anat.brain, sampling=sp)
    centre = _tumour_centre(rng, anat, depth, max(15.0, 1.2 * r0))
    grid = np.indices(anat.shape, dtype=np.float32).transpose(1, 2, 3, 0)
    offset = (grid - centre) * sp
    distance = np.linalg.norm(offset, axis=-1)
    directions = offset / np.maximum(distance, 1e-6)[..., None]
    radius = r0 * np.clip(1.0 + _angular_field(rng, directions, 0.2), 0.6, 1.5)
    rho = distance / radius  # 0 at the centre, 1 on the lumpy core boundary
    core = (rho < 1.0) & anat.brain
    rim_gaps = _angular_field(rng, directions, 1.0)
    rim_present = rim_gaps > (np.quantile(rim_gaps[core], rng.uniform(0.2, 0.35))
                              if rng.random() < 0.5 and core.any() else -np.inf)
    masks = {t: np.zeros(anat.shape, dtype=bool) for t in ("NCR", "NET", "ED", "ET", "RC")}
    if kind == "classic":
        inner = rng.uniform(0.4, 0.7)
        masks["NCR"] = core & (rho < inner)
        masks["ET"] = core & (rho >= inner) & (rho < inner + rim / r0) & rim_present
    elif kind == "no_necrosis":
        masks["ET"] = core & (rho >= 1.0 - rim / r0) & rim_present
    masks["NET"] = core & ~masks["NCR"] & ~masks["ET"]
    # Oedema follows white matter: its reach from the core grows with the (smoothed) WM fraction.
    extent = max(rng.uniform(5.0, 30.0), 1.5 * sp)
    wm_smooth = gaussian_filter(anat.wm, sigma=4.0 / sp)
    reach = extent * (0.25 + 0.75 * wm_smooth / max(float(wm_smooth.max()), 1e-6))
    reach *= 1.0 + 0.25 * _smooth_noise(rng, anat.shape, 8.0 / sp)
    from_core = distance_transform_edt(~core, sampling=sp)
    masks["ED"] = (from_core < reach) & ~core & anat.brain & (anat.csf < 0.5)
    if with_rc:
        masks["RC"] = _resection_cavity(rng, anat, centre, r0, grid) & ~masks["ET"]
        for t in ("NCR", "NET", "ED"):
            masks[t] &= ~masks["RC"]
    return masks, kind


def _resection_cavity(rng: np.random.Generator, anat: Anatomy, centre: np.ndarray, r0: float,
                      grid: np.ndarray) -> np.ndarray:
    """A fluid-filled ball next to the tumour core (post-operative cavity)."""
    sp = anat.spacing
    cavity_centre = centre + _random_unit_vectors(rng, 1)[0] * r0 * rng.uniform(0.9, 1.3) / sp
    cavity_radius = max(r0 * rng.uniform(0.5, 0.8), 1.5 * sp)
    return (np.linalg.norm((grid - cavity_centre) * sp, axis=-1) < cavity_radius) & anat.brain


# ---------------------------------------------------------------------------------------------------- rendering
def _bias_field(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """Smooth multiplicative field within about ±15 % (low-order polynomial in normalised coordinates)."""
    coords = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*coords, indexing="ij")
    terms = (x, y, z, x * x - 1 / 3, y * y - 1 / 3, z * z - 1 / 3, x * y, y * z)
    log_field = sum(c * t for c, t in zip(rng.uniform(-0.06, 0.06, len(terms)), terms))
    return np.exp(log_field).astype(np.float32)


def _render(rng: np.random.Generator, anat: Anatomy, fractions: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The four sequences (canonical order) from tissue fractions."""
    from scipy.ndimage import gaussian_filter

    sp = anat.spacing
    images = {}
    for column, modality in enumerate(MODALITIES):
        # Per-case jitter of every class mean (±10 %) and of the gain, so that absolute values carry no signal.
        means = {t: INTENSITIES[t][column] * rng.uniform(0.9, 1.1) for t in fractions}
        gain = rng.uniform(400.0, 1200.0)
        clean = sum(fractions[t] * means[t] for t in fractions).astype(np.float32)
        clean *= _bias_field(rng, anat.shape) * (1.0 + 0.04 * _smooth_noise(rng, anat.shape, 3.0 / sp))
        clean = gaussian_filter(clean, sigma=rng.uniform(0.5, 1.0) / sp) * gain  # PSF of about 1 mm
        sigma = gain * float(np.mean([means[t] for t in ("WM", "GM")])) / rng.uniform(20.0, 40.0)
        noisy = np.hypot(clean + rng.normal(0, sigma, anat.shape), rng.normal(0, sigma, anat.shape))  # Rician
        images[modality] = (noisy * anat.brain).astype(np.float32)  # skull-stripped: background exactly 0
    return images


@dataclass
class PhantomCase:
    """One generated case. ``images`` in canonical modality order; ``label`` in the format's original values."""

    images: Dict[str, np.ndarray]
    label: np.ndarray
    tissues: Dict[str, np.ndarray]
    """Boolean mask per tumour tissue (NCR, NET, ED, ET, RC)."""
    fractions: Dict[str, np.ndarray]
    """Fractions of GM, WM, CSF and the tumour tissues used for rendering."""
    kind: str
    spacing: float
    affine: np.ndarray


def generate_case(seed: Union[int, Sequence[int]], spacing: float = DEFAULT_SPACING_MM, format_key: str = "brats2021",
                  with_rc: Optional[bool] = None, kind: Optional[str] = None) -> PhantomCase:
    """Generate one case, deterministically from ``seed``.

    ``with_rc``: add a resection cavity (only for formats with an RC label); ``None`` = at random, in half of the
    cases of such formats. ``kind``: one of :data:`TUMOUR_KINDS` (``no_enhancing``: no enhancing tumour); ``None`` =
    at random (60/20/20 %). Forcing the kind that ``seed`` draws changes nothing; another kind keeps the tumour
    core's position and shape.
    """
    if kind is not None and kind not in TUMOUR_KINDS:
        raise MissingModError(f"phantom tumour kind must be one of {', '.join(TUMOUR_KINDS)}, got {kind!r}")
    fmt = get_format(format_key)
    rng = np.random.default_rng(seed)
    anat = anatomy(float(spacing))
    has_rc_label = fmt.labels.has_rc
    if with_rc and not has_rc_label:
        raise MissingModError(f"format {fmt.key} has no resection cavity label")
    rc_draw = rng.random() < 0.5
    with_rc = has_rc_label and (rc_draw if with_rc is None else with_rc)
    tissues, kind = _insert_tumour(rng, anat, with_rc, kind)
    tumour = np.zeros(anat.shape, dtype=bool)
    for mask in tissues.values():
        tumour |= mask
    healthy = (~tumour).astype(np.float32)
    fractions = {"GM": anat.gm * healthy, "WM": anat.wm * healthy, "CSF": anat.csf * healthy,
                 **{t: m.astype(np.float32) for t, m in tissues.items()}}
    images = _render(rng, anat, fractions)
    label = np.zeros(anat.shape, dtype=np.uint8)
    for tissue, mask in tissues.items():
        if tissue in fmt.labels.values:
            label[mask] = fmt.labels.values[tissue]
    return PhantomCase(images, label, tissues, fractions, kind, anat.spacing, anat.affine)


# ------------------------------------------------------------------------------------------------------ writers
def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def _write_case_folder(fmt: DatasetFormat, case: PhantomCase, case_id: str, root: Path, labelled: bool,
                       extension: str, quirks: bool) -> None:
    group = ("HGG" if case.tissues["ET"].any() else "LGG") if fmt.group_dirs else ""
    folder = root / group / case_id
    folder.mkdir(parents=True)
    for modality in MODALITIES:
        name = f"{case_id}{fmt.separator}{fmt.official_suffix(modality)}{extension}"
        _save_nifti(case.images[modality], case.affine, folder / name)
    if labelled:
        seg_name = f"{case_id}{fmt.separator}{fmt.seg_suffix}{extension}"
        if quirks and case_id in fmt.known_seg_names:
            seg_name = fmt.known_seg_names[case_id]
        _save_nifti(case.label, case.affine, folder / seg_name)


def _write_msd_case(fmt: DatasetFormat, case: PhantomCase, case_id: str, root: Path, labelled: bool) -> None:
    stacked = np.stack([case.images[m] for m in fmt.msd_channels], axis=-1)
    images_dir = root / ("imagesTr" if labelled else "imagesTs")
    images_dir.mkdir(parents=True, exist_ok=True)
    _save_nifti(stacked, case.affine, images_dir / f"{case_id}.nii.gz")
    if labelled:
        (root / "labelsTr").mkdir(exist_ok=True)
        _save_nifti(case.label, case.affine, root / "labelsTr" / f"{case_id}.nii.gz")


def _write_msd_dataset_json(fmt: DatasetFormat, root: Path, labelled: List[str], unlabelled: List[str]) -> None:
    msd_names = {"FLAIR": "FLAIR", "T1": "T1w", "T1ce": "t1gd", "T2": "T2w"}
    dataset = {
        "name": "BRATS", "description": "Gliomas segmentation tumour and oedema in on brain images (phantom)",
        "reference": "https://www.med.upenn.edu/sbia/brats2017.html", "licence": "CC-BY-SA 4.0",
        "release": "2.0 04/05/2018", "tensorImageSize": "4D",
        "modality": {str(i): msd_names[m] for i, m in enumerate(fmt.msd_channels)},
        "labels": {"0": "background", **{str(v): n for v, n in sorted(fmt.labels.names.items())}},
        "numTraining": len(labelled), "numTest": len(unlabelled),
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in labelled],
        "test": [f"./imagesTs/{c}.nii.gz" for c in unlabelled],
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")


def _write_partitioning_csvs(fmt: DatasetFormat, root: Path, case_ids: List[str]) -> None:
    for number, name in enumerate(fmt.partitioning_csvs, start=1):
        n_partitions = 2 * number  # partitioning_2 splits the institutions further
        with open(root / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Subject_ID", "Partition_ID"])
            for i, case_id in enumerate(case_ids):
                writer.writerow([case_id, i % n_partitions + 1])


def write_phantom_dataset(out_dir: os.PathLike, n: int, format_key: str = "brats2021",
                          spacing: float = DEFAULT_SPACING_MM, seed: int = 0, n_unlabelled: int = 0,
                          first_index: Optional[int] = None, extension: str = ".nii.gz", quirks: bool = True,
                          progress: bool = True, kinds: Optional[Sequence[Optional[str]]] = None
                          ) -> Dict[str, PhantomCase]:
    """Write ``n`` labelled and ``n_unlabelled`` image-only cases in the source layout of ``format_key``.

    ``out_dir`` becomes the folder that ``convert FORMAT out_dir ID`` reads: the case folders (inside HGG/LGG for
    2018/2019), or imagesTr/labelsTr/imagesTs and dataset.json for MSD. Case ``i`` uses the seed ``(seed, i)`` and
    the id ``case_name`` formatted with ``first_index + i`` (default: the format's first index).
    ``quirks``: reproduce known naming bugs (BraTS 2020 case 355's segmentation file). ``extension``: ``.nii.gz``
    or ``.nii`` (BraTS 2019 ships both). ``kinds``: one tumour kind (or ``None``: at random) per case, labelled
    first (:func:`generate_case`). Returns {case id: case}.
    """
    from tqdm import tqdm

    fmt = get_format(format_key)
    out = Path(out_dir)
    if n < 0 or n_unlabelled < 0 or n + n_unlabelled == 0:
        raise MissingModError(f"number of phantom cases must be positive, got {n} labelled and "
                              f"{n_unlabelled} unlabelled")
    if extension not in (".nii.gz", ".nii") or (fmt.is_msd and extension != ".nii.gz"):
        raise MissingModError(f"extension must be .nii.gz or .nii (MSD: .nii.gz), got {extension!r}")
    if first_index is not None and first_index < 0:
        raise MissingModError(f"first case index must be 0 or more, got {first_index}")
    if kinds is not None and len(kinds) != n + n_unlabelled:
        raise MissingModError(f"phantom kinds: need one per case ({n + n_unlabelled}), got {len(kinds)}")
    for kind in kinds or ():
        if kind is not None and kind not in TUMOUR_KINDS:
            raise MissingModError(f"phantom tumour kind must be one of {', '.join(TUMOUR_KINDS)}, got {kind!r}")
    if out.exists() and any(out.iterdir()):
        raise MissingModError(f"phantom output folder {str(out)!r} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    start = fmt.first_index if first_index is None else first_index
    cases: Dict[str, PhantomCase] = {}
    labelled_ids, unlabelled_ids = [], []
    for i in tqdm(range(n + n_unlabelled), desc=f"phantom {fmt.key}", disable=not progress):
        case_id = fmt.case_name.format(index=start + i)
        case = generate_case((seed, i), spacing, fmt.key, kind=None if kinds is None else kinds[i])
        labelled = i < n
        if fmt.is_msd:
            _write_msd_case(fmt, case, case_id, out, labelled)
        else:
            _write_case_folder(fmt, case, case_id, out, labelled, extension, quirks)
        (labelled_ids if labelled else unlabelled_ids).append(case_id)
        cases[case_id] = case
    if fmt.is_msd:
        _write_msd_dataset_json(fmt, out, labelled_ids, unlabelled_ids)
    _write_partitioning_csvs(fmt, out, labelled_ids)
    return cases
