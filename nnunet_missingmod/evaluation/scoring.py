"""Score prediction folders against a ground-truth folder: one record per case, subset and region.

A *record* is a plain dict with exactly the keys of :data:`RECORD_FIELDS`::

    {"trainer": "nnUNetTrainerMissingMod", "case": "BraTS2021_00000", "subset": "T1ce+FLAIR", "n_modalities": 2,
     "region": "WT", "dice": 0.91, "hd95": 3.0,
     "lesion_dice": 0.88, "lesion_hd95": 4.1, "n_gt_lesions": 2, "n_tp": 2, "n_fp": 1, "n_fn": 0}

The whole-volume ``dice``/``hd95`` come first (the default metrics); the lesion-wise columns
(:data:`LESION_FIELDS`, :mod:`nnunet_missingmod.evaluation.lesionwise`, one BraTS 2023 protocol) follow, computed
in the same job from the same reading of the images. Records read from an older metrics.csv lack them (``None``).

``subset`` is a :data:`~nnunet_missingmod.modalities.SUBSET_NAMES` entry, or ``"all"`` (with ``n_modalities``
``None``) when the predictions were not made under a known subset. Dice is in [0, 1], HD95 in mm.

Cases are matched by file name. Scoring runs in parallel over cases in a ``spawn`` process pool, which is safe
even when the parent process has initialised CUDA; workers receive file paths only and import numpy, scipy and
SimpleITK, not torch. Each case's ground truth is read once for all of its predictions (trainers × subsets).
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.faults import die_with_parent
from nnunet_missingmod.nifti_checks import GEOMETRY_ATOL, read_label_map
from nnunet_missingmod.evaluation.lesionwise import (
    DEFAULT_LESION_PROTOCOL, LESION_PROTOCOLS, LesionProtocol, LesionScore, lesionwise_scores)
from nnunet_missingmod.evaluation.metrics import DEFAULT_HD95_VARIANT, HD95_VARIANTS, Regions, dice, hd95, \
    region_masks

BASE_FIELDS: Tuple[str, ...] = ("trainer", "case", "subset", "n_modalities", "region", "dice", "hd95")
LESION_FIELDS: Tuple[str, ...] = ("lesion_dice", "lesion_hd95", "n_gt_lesions", "n_tp", "n_fp", "n_fn")
RECORD_FIELDS: Tuple[str, ...] = BASE_FIELDS + LESION_FIELDS
NO_SUBSET = "all"
"""Subset name of predictions not made under a known modality subset (plain ``score`` of a folder)."""

LABEL_FILE_ENDINGS: Tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")

Record = Dict[str, Any]
SubsetLike = Union[None, str, Any]  # None/"all", a subset name, or a modalities.ModalitySubset


class PredictionFolder(NamedTuple):
    """One folder of predicted label maps, made by ``trainer`` with the sequences of ``subset`` available."""
    trainer: str
    subset: SubsetLike
    folder: str


class RegionScore(NamedTuple):
    """Scores of one region of one case: whole-volume Dice and HD95, and the lesion-wise ones."""
    dice: float
    hd95: float
    lesions: LesionScore


class _CaseJob(NamedTuple):
    case: str
    gt_path: str
    pred_path: str


LabelSet = Optional[Tuple[int, ...]]
"""The label values a label map may hold (``None``: any integer)."""

OTHER_CONVENTION_HINT = "if both folders hold {name} labels (e.g. labels-back output), score with --format {name}"


def read_label_image(path: str, what: str = "label image", labels: LabelSet = None
                     ) -> Tuple[np.ndarray, Tuple[float, ...]]:
    """Read a label image with :func:`nnunet_missingmod.nifti_checks.read_label_map` (truncated files, non-integer
    values and, with ``labels``, any other value are errors naming the file; values of a BraTS convention are
    named as such).

    Returns:
        ``(labels, spacing)``: an integer array in numpy axis order ``(z, y, x)`` and the voxel spacing in mm in the
        same order (SimpleITK reports ``(x, y, z)``; we reverse it).
    """
    values, image = read_label_map(str(path), what, labels, label_conventions(), OTHER_CONVENTION_HINT)
    return values, tuple(float(s) for s in reversed(image.GetSpacing()))


def label_conventions() -> Dict[str, Tuple[int, ...]]:
    """The original label values of each BraTS convention, named by its newest format (e.g. ``brats2021``:
    0, 1, 2, 4), from the conversion format table."""
    from nnunet_missingmod.conversion.formats import FORMATS
    groups: Dict[Tuple[int, ...], List[str]] = {}
    for key, fmt in FORMATS.items():
        groups.setdefault(tuple(fmt.labels.label_values), []).append(key)
    named = {}
    for values, keys in groups.items():
        brats = sorted(k for k in keys if k.startswith("brats"))
        named[brats[-1] if brats else sorted(keys)[0]] = values
    return named


def label_values_of_regions(regions: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
    """The label values a label map scored with ``regions`` may hold: for the regions of a ``--format`` preset,
    exactly the labels of its convention(s) (brats2024's RC is in no region); otherwise every value from background 0
    to the largest region value (``--regions 'ET=3'`` scores maps that also hold 1 and 2)."""
    from nnunet_missingmod.conversion.formats import FORMATS
    from nnunet_missingmod.evaluation.regions import REGION_PRESETS
    values = {int(v) for vs in regions.values() for v in vs}
    wanted = {name: tuple(sorted(int(v) for v in vs)) for name, vs in regions.items()}
    conventions = [FORMATS[key].labels.label_values for key, preset in REGION_PRESETS.items()
                   if {name: tuple(sorted(vs)) for name, vs in preset.items()} == wanted]
    if conventions:  # brats2023 and brats2024 share their regions: the labels of either
        return tuple(sorted({0, *values, *(v for labels in conventions for v in labels)}))
    return tuple(range(max(values, default=0) + 1))


def list_label_files(folder: str, file_ending: Optional[str] = None) -> Dict[str, str]:
    """Case name -> path of each label image directly in ``folder``.

    ``file_ending`` (e.g. dataset.json's ``".nii.gz"``) restricts the files; by default every ending of
    :data:`LABEL_FILE_ENDINGS` is accepted. Other files (nnU-Net's ``dataset.json``, ``plans.json``, ...) are
    ignored.
    """
    if not os.path.isdir(folder):
        raise MissingModError(f"not a folder: {folder}")
    endings = (file_ending,) if file_ending else LABEL_FILE_ENDINGS
    cases: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        ending = next((e for e in endings if name.endswith(e)), None)
        if ending is None or name.startswith(".") or not os.path.isfile(path):
            continue
        case = name[:-len(ending)]
        if case in cases:
            raise MissingModError(f"{folder}: two label files for case {case!r}: "
                                  f"{os.path.basename(cases[case])} and {name}")
        cases[case] = path
    return cases


def match_cases(gt_dir: str, pred_dir: str, file_ending: Optional[str] = None) -> List[Tuple[str, str, str]]:
    """``(case, gt_path, pred_path)`` for every case, matched by file name, sorted by case.

    Raises :class:`MissingModError` if the ground-truth folder is empty or the two folders do not hold the same
    cases (naming the missing and extra ones).
    """
    gt = list_label_files(gt_dir, file_ending)
    if not gt:
        raise MissingModError(f"no label images in ground-truth folder {gt_dir}"
                              + (f" ending in {file_ending}" if file_ending else ""))
    pred = list_label_files(pred_dir, file_ending)
    missing = sorted(set(gt) - set(pred))
    extra = sorted(set(pred) - set(gt))
    if missing or extra:
        problems = []
        if missing:
            expected = [os.path.basename(gt[case]) for case in missing]
            problems.append(f"no prediction for {len(missing)} case(s) (missing {_short_list(expected)})")
        if extra:
            unexpected = [os.path.basename(pred[case]) for case in extra]
            problems.append(f"{len(extra)} prediction(s) without ground truth ({_short_list(unexpected)})")
        raise MissingModError(f"{pred_dir} does not match {gt_dir}: " + "; ".join(problems))
    return [(case, gt[case], pred[case]) for case in sorted(gt)]


def _score_case_group(gt_path: str, pred_paths: Sequence[str], regions: Regions, hd95_variant: str,
                      lesion_protocol: LesionProtocol) -> List[Dict[str, RegionScore]]:
    """Score several predictions of one case (e.g. one per subset), reading the ground truth only once. Both must
    hold only the labels of ``regions`` (:func:`label_values_of_regions`)."""
    labels = label_values_of_regions(regions)
    gt, gt_spacing = read_label_image(gt_path, "ground truth", labels)
    gt_masks = region_masks(gt, regions)
    results = []
    for pred_path in pred_paths:
        pred, pred_spacing = read_label_image(pred_path, "prediction", labels)
        if gt.shape != pred.shape:
            raise MissingModError(f"shape mismatch: prediction {pred_path} is {_xyz(pred.shape)} (x, y, z) but "
                                  f"ground truth {gt_path} is {_xyz(gt.shape)}")
        if not np.allclose(gt_spacing, pred_spacing, rtol=0, atol=GEOMETRY_ATOL):
            raise MissingModError(f"spacing mismatch: prediction {pred_path} has {_xyz(pred_spacing)} mm (x, y, z) "
                                  f"but ground truth {gt_path} has {_xyz(gt_spacing)} mm")
        _check_same_position(gt_path, pred_path)
        results.append(_score_against(gt_masks, pred, gt_spacing, regions, hd95_variant, lesion_protocol))
    return results


def _check_same_position(gt_path: str, pred_path: str) -> None:
    """Origin and direction from the headers: a prediction shifted or flipped against the ground truth is an error,
    not a low score."""
    import SimpleITK as sitk
    headers = []
    for path in (gt_path, pred_path):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        headers.append((np.asarray(reader.GetOrigin()), np.asarray(reader.GetDirection())))
    (gt_origin, gt_direction), (pred_origin, pred_direction) = headers
    if not np.allclose(gt_origin, pred_origin, atol=GEOMETRY_ATOL):
        raise MissingModError(f"origin mismatch: prediction {pred_path} has {_xyz(pred_origin[::-1])} mm (x, y, z) "
                              f"but ground truth {gt_path} has {_xyz(gt_origin[::-1])} mm")
    if not np.allclose(gt_direction, pred_direction, atol=GEOMETRY_ATOL):
        raise MissingModError(f"direction mismatch: prediction {pred_path} has direction {pred_direction.tolist()} "
                              f"but ground truth {gt_path} has {gt_direction.tolist()}")


def _score_against(gt_masks: Mapping[str, np.ndarray], pred: np.ndarray, spacing: Sequence[float],
                   regions: Regions, hd95_variant: str, lesion_protocol: LesionProtocol) -> Dict[str, RegionScore]:
    pred_masks = region_masks(pred, regions)
    return {name: RegionScore(dice(pred_masks[name], gt_masks[name]),
                              hd95(pred_masks[name], gt_masks[name], spacing, hd95_variant),
                              lesionwise_scores(pred_masks[name], gt_masks[name], spacing, lesion_protocol))
            for name in regions}


def scoring_record(trainer: str, case: str, subset_key: Tuple[str, Optional[int]], region: str,
                   score: RegionScore) -> Record:
    """One row of ``metrics.csv``: ``trainer``'s score of ``region`` on ``case`` under the subset of ``subset_key``."""
    subset_name, n_modalities = subset_key
    lesions = score.lesions
    return {"trainer": trainer, "case": case, "subset": subset_name, "n_modalities": n_modalities,
            "region": region, "dice": float(score.dice), "hd95": float(score.hd95),
            "lesion_dice": float(lesions.dice), "lesion_hd95": float(lesions.hd95),
            "n_gt_lesions": int(lesions.n_gt_lesions), "n_tp": int(lesions.n_tp), "n_fp": int(lesions.n_fp),
            "n_fn": int(lesions.n_fn)}


def lesion_protocol_named(key: str) -> LesionProtocol:
    """The :data:`LESION_PROTOCOLS` entry of ``key`` (``gli``, ``ssa``, ``ped``, ``men``, ``met``)."""
    if key not in LESION_PROTOCOLS:
        raise MissingModError(f"unknown lesion-wise protocol {key!r}; expected one of {', '.join(LESION_PROTOCOLS)}")
    return LESION_PROTOCOLS[key]


def subset_name_and_cardinality(subset: SubsetLike) -> Tuple[str, Optional[int]]:
    """``("T1ce+FLAIR", 2)`` for a subset (object or any spelling :func:`modalities.parse_subset` accepts);
    ``("all", None)`` for ``None`` or ``"all"``: no subset applies."""
    if subset is None or (isinstance(subset, str) and subset.strip().lower() == NO_SUBSET):
        return NO_SUBSET, None
    from nnunet_missingmod.modalities import ModalitySubset, parse_subset
    parsed = subset if isinstance(subset, ModalitySubset) else parse_subset(subset)
    return parsed.name, parsed.cardinality


def score_prediction_folders(gt_dir: str, folders: Iterable[PredictionFolder], regions: Regions,
                             hd95_variant: str = DEFAULT_HD95_VARIANT, num_processes: int = 2,
                             file_ending: Optional[str] = None,
                             lesion_protocol: str = DEFAULT_LESION_PROTOCOL) -> List[Record]:
    """Records of every case of every prediction folder, scored in one process pool.

    Args:
        gt_dir: folder of ground-truth label images (e.g. ``labelsTr``).
        folders: :class:`PredictionFolder` ``(trainer, subset, folder)`` items; each folder must hold exactly the
            ground truth's cases.
        regions: ordered region name -> label values (see :mod:`nnunet_missingmod.evaluation.regions`).
        hd95_variant: whole-volume HD95, a :data:`~nnunet_missingmod.evaluation.metrics.HD95_VARIANTS` name
            (``"max_directed"``, the BraTS 2023 HD95, by default); the lesion-wise HD95 is always the BraTS 2023 one.
        num_processes: worker processes; 1 scores in this process.
        file_ending: restrict to files with this ending (dataset.json's ``file_ending``).
        lesion_protocol: the BraTS 2023 challenge whose lesion-wise rules give the lesion columns
            (:data:`~nnunet_missingmod.evaluation.lesionwise.LESION_PROTOCOLS` key).
    Returns:
        records ordered by folder, case, then region.
    """
    if hd95_variant not in HD95_VARIANTS:
        raise MissingModError(f"unknown HD95 variant {hd95_variant!r}; expected one of {', '.join(HD95_VARIANTS)}")
    if num_processes < 1:
        raise MissingModError(f"the number of processes must be at least 1, got {num_processes}")
    protocol = lesion_protocol_named(lesion_protocol)
    regions = {name: tuple(int(v) for v in values) for name, values in regions.items()}
    labelled_jobs: List[Tuple[str, Tuple[str, Optional[int]], _CaseJob]] = []
    for trainer, subset, folder in folders:
        subset_key = subset_name_and_cardinality(subset)
        for case, gt_path, pred_path in match_cases(gt_dir, folder, file_ending):
            labelled_jobs.append((trainer, subset_key, _CaseJob(case, gt_path, pred_path)))
    scores = _run_jobs([job for _, _, job in labelled_jobs], regions, hd95_variant, protocol, num_processes)
    records = []
    for (trainer, subset_key, job), per_region in zip(labelled_jobs, scores):
        records += [scoring_record(trainer, job.case, subset_key, region, score)
                    for region, score in per_region.items()]
    return records


def score_prediction_folder(gt_dir: str, pred_dir: str, regions: Regions, trainer: str = "",
                            subset: SubsetLike = None, hd95_variant: str = DEFAULT_HD95_VARIANT,
                            num_processes: int = 2, file_ending: Optional[str] = None,
                            lesion_protocol: str = DEFAULT_LESION_PROTOCOL) -> List[Record]:
    """Records of one prediction folder (see :func:`score_prediction_folders`)."""
    return score_prediction_folders(gt_dir, [PredictionFolder(trainer, subset, pred_dir)], regions,
                                    hd95_variant, num_processes, file_ending, lesion_protocol)


def _run_jobs(jobs: Sequence[_CaseJob], regions: Mapping[str, Tuple[int, ...]], hd95_variant: str,
              lesion_protocol: LesionProtocol, num_processes: int) -> List[Dict[str, RegionScore]]:
    """Scores of each job, in the order of ``jobs``. One task per case: all its predictions (one per trainer and
    subset) are scored, whole-volume and lesion-wise, against one reading of its ground truth; a prediction file
    that several entries share (a routed entry's) is scored once."""
    by_case: Dict[str, Dict[str, List[int]]] = {}
    for index, job in enumerate(jobs):
        by_case.setdefault(job.gt_path, {}).setdefault(job.pred_path, []).append(index)
    tasks = [(gt_path, list(by_pred), regions, hd95_variant, lesion_protocol) for gt_path, by_pred in by_case.items()]
    workers = min(num_processes, len(tasks))
    if workers <= 1:
        task_results = [score_task(t) for t in tasks]
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=die_with_parent)  # no worker outlives a SIGKILLed score or evaluate
        try:
            task_results = list(pool.map(score_task, tasks))
        except BaseException:  # an error or SIGTERM (Terminated): the cases not yet started are not scored
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    scores: List[Dict[str, RegionScore]] = [{} for _ in jobs]
    for by_pred, results in zip(by_case.values(), task_results):
        for indices, result in zip(by_pred.values(), results):
            for index in indices:
                scores[index] = result
    return scores


def score_task(task: Tuple[str, List[str], Mapping[str, Tuple[int, ...]], str, LesionProtocol]
               ) -> List[Dict[str, RegionScore]]:
    gt_path, pred_paths, regions, hd95_variant, lesion_protocol = task
    return _score_case_group(gt_path, pred_paths, regions, hd95_variant, lesion_protocol)


def _short_list(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _xyz(values: Sequence[Any]) -> str:
    """Numpy-ordered shape/spacing shown in the (x, y, z) order image viewers and SimpleITK use."""
    return "×".join(f"{v:g}" if isinstance(v, float) else str(v) for v in reversed(tuple(values)))
