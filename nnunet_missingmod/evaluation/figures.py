"""Pictures of the segmentations, the way the MST-KDNet README shows them: per case one row per model; the columns
are the four sequences on the axial slice through the tumour's largest extent, the ground truth, and the
segmentation under the full set and the README's three scenarios (FLAIR+T1ce+T2, FLAIR+T1ce, FLAIR), each with its
Dice in the corner.

Colours follow the BraTS convention (ET red, the rest of TC yellow, the rest of WT green, so that WT = red + yellow +
green and TC = red + yellow). A label's colour comes from the regions it belongs to, not from its value, so every
BraTS year's label convention is drawn alike.

:func:`select_cases` and :func:`tumour_slice` only compute; :func:`render_case_figure` writes one PNG atomically and
:func:`write_case_figures` writes ``OUT/cases/CASE.png`` for ``evaluate``. matplotlib's object API is used without
pyplot: no global state and no display.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.atomic_io import atomic_output
from nnunet_missingmod.nifti_checks import error_reason
from nnunet_missingmod.modalities import FULL_SET, PAPER_ORDER, ModalitySubset, paper_subset_name, parse_subset

FIGURE_SUBSETS: Tuple[ModalitySubset, ...] = tuple(
    parse_subset(text) for text in ("all", "FLAIR+T1ce+T2", "FLAIR+T1ce", "FLAIR"))
"""The scenario columns: the full set, then one, two and three sequences missing (the MST-KDNet README's figure)."""
ALL = "all"
DEFAULT_FIGURES = 3  # the best, median and worst case
RANKING_REGION = "WT"

RGB = Tuple[float, float, float]
BRATS_COLOURS: Tuple[Tuple[str, RGB, str], ...] = (
    ("ET", (0.95, 0.05, 0.05), "ET (enhancing tumour)"),
    ("TC", (1.0, 0.92, 0.0), "TC without ET (necrosis, non-enhancing core)"),
    ("WT", (0.1, 0.8, 0.1), "WT without TC (oedema)"),
)
"""(region, colour, legend) in the order a label is matched: a label in ET is red, else in TC yellow, else in WT
green."""
OTHER_COLOURS: Tuple[RGB, ...] = ((0.2, 0.45, 1.0), (0.9, 0.3, 0.9), (0.0, 0.85, 0.85), (1.0, 0.55, 0.0))
"""For labels in none of WT/TC/ET (datasets scored per label): colours BraTS does not use."""

# Layout in inches at DPI dots per inch; fixed (no automatic layout), so the picture's size in pixels is known
DPI = 100
PANEL = 1.8
TITLE_HEIGHT, HEADER_HEIGHT, ROW_LABEL_HEIGHT = 0.55, 0.3, 0.28
LEGEND_ROW_HEIGHT, NOTE_HEIGHT, MARGIN = 0.3, 0.22, 0.1
LEGEND_COLUMNS = 3
FONT_SIZE = 9
DICE_FONT_SIZE = 8


# ------------------------------------------------------------------------------------------------ choosing cases

def parse_figure_count(value: Union[str, int]) -> Union[int, str]:
    """``--figures``: a number of cases (0 = no pictures) or ``all``."""
    text = str(value).strip().lower()
    if text == ALL:
        return ALL
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise MissingModError(f"--figures: expected a number of cases (0 = none) or 'all', got {value!r}")
    return count


def ranking_scores(records: Sequence[Mapping], trainer: Optional[str] = None) -> Tuple[Dict[str, float], str]:
    """Case → the score the cases are ranked by, and what it is: the full-set WT Dice of ``trainer`` (default: the
    first trainer of the records), or, where that was not evaluated, the mean WT Dice over the subsets that were
    (WT missing from the regions: the first region scored)."""
    if not records:
        return {}, "no records"
    trainer = records[0]["trainer"] if trainer is None else trainer
    own = [r for r in records if r["trainer"] == trainer]
    if not own:
        raise ValueError(f"no records of trainer {trainer!r}")
    regions = list(dict.fromkeys(r["region"] for r in own))
    region = RANKING_REGION if RANKING_REGION in regions else regions[0]
    own = [r for r in own if r["region"] == region]
    full = [r for r in own if r["subset"] == FULL_SET.name]
    chosen = full or own
    values: Dict[str, List[float]] = {}
    for r in chosen:
        values.setdefault(r["case"], []).append(float(r["dice"]))
    what = f"{'full-set' if full else 'mean over the evaluated subsets of the'} {region} Dice of {trainer}"
    return {case: float(np.mean(v)) for case, v in values.items()}, what


def select_cases(records: Sequence[Mapping], count: Union[int, str], trainer: Optional[str] = None) -> List[str]:
    """The cases to draw, best first by :func:`ranking_scores`: ``count`` cases spread evenly over the ranking
    (3: the best, the median and the worst; 1: the median), or every case for ``all``. Ties and NaN are ordered
    deterministically: equal scores by case name, NaN last."""
    count = parse_figure_count(count)
    scores, _ = ranking_scores(records, trainer)
    ranked = sorted(scores, key=lambda case: (-scores[case] if math.isfinite(scores[case]) else math.inf, case))
    n = len(ranked)
    if count == ALL or count >= n:
        return ranked
    if count == 0:
        return []
    if count == 1:
        return [ranked[(n - 1) // 2]]
    return [ranked[i * (n - 1) // (count - 1)] for i in range(count)]  # strictly increasing: (n-1)/(count-1) >= 1


# ------------------------------------------------------------------------------------------------ choosing the slice

def tumour_values(regions: Mapping[str, Sequence[int]]) -> Tuple[int, ...]:
    """Every label value in some region: what counts as tumour for the slice choice and the colours."""
    return tuple(sorted({int(v) for values in regions.values() for v in values}))


def tumour_slice(labels: np.ndarray, values: Sequence[int]) -> int:
    """The axial slice (index on axis 0 of a ``(z, y, x)`` array) with the largest area of ``values``; the first of
    equal ones, and the middle slice when there is no tumour."""
    if labels.ndim != 3:
        raise ValueError(f"expected a (z, y, x) label volume, got shape {labels.shape}")
    areas = np.isin(labels, list(values)).reshape(labels.shape[0], -1).sum(axis=1)
    return int(np.argmax(areas)) if areas.max() > 0 else labels.shape[0] // 2


# ------------------------------------------------------------------------------------------------ colours

@dataclass(frozen=True)
class LabelColour:
    values: Tuple[int, ...]
    colour: RGB
    legend: str


def label_colours(regions: Mapping[str, Sequence[int]]) -> List[LabelColour]:
    """One entry per colour: which label values are drawn in it (by region membership) and its legend text."""
    by_colour: Dict[int, Tuple[RGB, str, List[int]]] = {}
    others = 0
    for value in tumour_values(regions):
        members = [name for name, values in regions.items() if value in values]
        match = next((i for i, (region, _, _) in enumerate(BRATS_COLOURS) if region in members), None)
        if match is None:
            key = len(BRATS_COLOURS) + others
            colour = OTHER_COLOURS[others % len(OTHER_COLOURS)]
            by_colour[key] = (colour, f"label {value} ({'+'.join(members)})", [])
            others += 1
        else:
            key = match
            by_colour.setdefault(key, (BRATS_COLOURS[match][1], BRATS_COLOURS[match][2], []))
        by_colour[key][2].append(value)
    return [LabelColour(tuple(values), colour, legend) for _, (colour, legend, values) in sorted(by_colour.items())]


def colour_overlay(labels: np.ndarray, colours: Sequence[LabelColour]) -> np.ndarray:
    """RGBA image of a 2-D label slice: each label in its colour, opaque; the rest transparent."""
    rgba = np.zeros(labels.shape + (4,), dtype=np.float32)
    for entry in colours:
        where = np.isin(labels, entry.values)
        rgba[where, :3] = entry.colour
        rgba[where, 3] = 1.0
    return rgba


# ------------------------------------------------------------------------------------------------ images

def read_volume(path: str, what: str) -> Tuple[np.ndarray, Tuple[float, float, float]]:
    """A 3-D image as a ``(z, y, x)`` array in LPS orientation (so axis 0 is axial and a slice shows the patient's
    right on the left, anterior at the top, as radiologists view it) and its spacing in the same order."""
    import SimpleITK as sitk
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MissingModError(f"cannot read {what} {path}: {error_reason(e)}") from None
    if image.GetDimension() != 3:
        raise MissingModError(f"{what} {path}: pictures need a 3-D image, got {image.GetDimension()}-D")
    image = sitk.DICOMOrient(image, "LPS")
    return sitk.GetArrayFromImage(image), tuple(float(s) for s in reversed(image.GetSpacing()))


def intensity_window(volume: np.ndarray) -> Tuple[float, float]:
    """The 1st and 99th percentiles of the non-zero voxels (the brain; all voxels if none is non-zero)."""
    values = volume[volume != 0] if np.any(volume != 0) else volume.ravel()
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    return low, high if high > low else low + 1.0


def crop_box(slices: Sequence[np.ndarray], margin: int = 2) -> Tuple[slice, slice]:
    """The rows and columns holding non-zero voxels in any of ``slices`` (the brain), with ``margin`` voxels."""
    occupied = np.any([s != 0 for s in slices], axis=0)
    if not occupied.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(occupied.any(axis=1)), np.flatnonzero(occupied.any(axis=0))
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(cols[0] - margin, 0), cols[-1] + margin + 1))


# ------------------------------------------------------------------------------------------------ one picture

@dataclass(frozen=True)
class FigureRow:
    """One model's row: its label on the picture, its name in the records, and its segmentation of the case per
    subset name (a subset that was not evaluated is absent)."""
    label: str
    trainer: str
    predictions: Mapping[str, str]


def dice_lookup(records: Sequence[Mapping]) -> Dict[Tuple[str, str, str], Dict[str, float]]:
    """(trainer, case, subset) → region → Dice."""
    table: Dict[Tuple[str, str, str], Dict[str, float]] = {}
    for r in records:
        table.setdefault((r["trainer"], r["case"], r["subset"]), {})[r["region"]] = float(r["dice"])
    return table


def column_title(subset: ModalitySubset) -> str:
    return "full set" if subset.is_full else paper_subset_name(subset)


def legend_height(n_colours: int) -> float:
    return LEGEND_ROW_HEIGHT * (1 + max(n_colours - 1, 0) // LEGEND_COLUMNS) + 0.1


def figure_size(n_rows: int, n_columns: int, n_notes: int = 0, n_colours: int = 3) -> Tuple[float, float]:
    """Width and height in inches of a picture with ``n_rows`` models, ``n_columns`` panels per row, ``n_notes``
    notes and ``n_colours`` legend entries."""
    width = 2 * MARGIN + n_columns * PANEL
    height = (TITLE_HEIGHT + HEADER_HEIGHT + n_rows * (ROW_LABEL_HEIGHT + PANEL) + legend_height(n_colours)
              + n_notes * NOTE_HEIGHT + MARGIN)
    return round(width, 2), round(height, 2)


def figure_pixels(n_rows: int, n_columns: int, n_notes: int = 0, n_colours: int = 3) -> Tuple[int, int]:
    """(height, width) in pixels of the PNG, as ``imread`` gives its shape."""
    width, height = figure_size(n_rows, n_columns, n_notes, n_colours)
    return int(round(height * DPI)), int(round(width * DPI))


def render_case_figure(path: str, case: str, images: Mapping[str, str], ground_truth: str,
                       rows: Sequence[FigureRow], regions: Mapping[str, Sequence[int]], records: Sequence[Mapping],
                       subsets: Sequence[ModalitySubset] = FIGURE_SUBSETS) -> List[str]:
    """Write the picture of ``case`` to ``path`` (PNG, atomically: a failed render leaves no file).

    ``images``: canonical modality → image file (all four); ``ground_truth``: the label file; ``rows``: one per
    model; ``records``: the scores (for the Dice in the corners). A scenario column that no row has a
    segmentation for is left out, with a note on the picture; the notes are returned.
    """
    missing = [m for m in PAPER_ORDER if m not in images]
    if missing:
        raise ValueError(f"case {case}: no image for {', '.join(missing)}")
    if not rows:
        raise ValueError("a picture needs at least one model row")
    gt, spacing = read_volume(ground_truth, "ground truth")
    z = tumour_slice(gt, tumour_values(regions))
    sequences = {}
    for modality in PAPER_ORDER:
        volume, _ = read_volume(images[modality], f"{modality} image")
        _check_shape(volume, gt, images[modality])
        sequences[modality] = (volume[z], intensity_window(volume))
    shown = [s for s in subsets if any(s.name in row.predictions for row in rows)]
    notes = [f"{column_title(s)}: not evaluated (not in --subsets), column left out"
             for s in subsets if s not in shown]
    segmentations = {}
    for row in rows:
        for subset in shown:
            if subset.name in row.predictions:
                volume, _ = read_volume(row.predictions[subset.name], f"{row.label} {subset.name} segmentation")
                _check_shape(volume, gt, row.predictions[subset.name])
                segmentations[row.label, subset.name] = volume[z]
    box = crop_box([image for image, _ in sequences.values()] + [gt[z]])
    figure = _draw(case, z, gt.shape[0], spacing, sequences, gt[z], rows, shown, segmentations, regions,
                   dice_lookup(records), notes, box)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return notes


def _check_shape(volume: np.ndarray, gt: np.ndarray, path: str) -> None:
    if volume.shape != gt.shape:
        raise MissingModError(f"{path}: shape {volume.shape[::-1]} differs from the ground truth's "
                              f"{gt.shape[::-1]} (x, y, z); pictures need one geometry per case")


def _draw(case, z, n_slices, spacing, sequences, gt_slice, rows, shown, segmentations, regions, dice, notes, box):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = label_colours(regions)
    n_columns = len(PAPER_ORDER) + 1 + len(shown)
    width, height = figure_size(len(rows), n_columns, len(notes), len(colours))
    figure = Figure(figsize=(width, height), dpi=DPI)
    aspect = spacing[1] / spacing[2]  # rows / columns of an axial slice
    background, background_window = sequences["FLAIR"]
    titles = list(PAPER_ORDER) + ["ground truth"] + [column_title(s) for s in shown]

    def panel(row: int, column: int):
        top = height - TITLE_HEIGHT - HEADER_HEIGHT - row * (ROW_LABEL_HEIGHT + PANEL) - ROW_LABEL_HEIGHT
        axis = figure.add_axes(((MARGIN + column * PANEL + 0.03) / width, (top - PANEL + 0.03) / height,
                                (PANEL - 0.06) / width, (PANEL - 0.06) / height))
        axis.set_xticks([])
        axis.set_yticks([])
        return axis

    def show_grey(axis, image, window):
        axis.imshow(image[box], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")

    def show_labels(axis, labels):
        show_grey(axis, background, background_window)
        axis.imshow(colour_overlay(labels[box], colours), aspect=aspect, interpolation="nearest")

    figure.text(MARGIN / width, 1 - 0.06 / height, f"{case}: axial slice {z + 1} of {n_slices} (the largest "
                "tumour area of the ground truth)", fontsize=FONT_SIZE + 2, va="top", ha="left", weight="bold",
                parse_math=False)  # names are shown as they are, a '$' included
    figure.text(MARGIN / width, 1 - 0.3 / height, "segmentations drawn over FLAIR; in the corner the Dice per "
                "region of the whole volume; WT = red + yellow + green, TC = red + yellow, ET = red",
                fontsize=FONT_SIZE, va="top", ha="left")
    for column, title in enumerate(titles):
        figure.text((MARGIN + (column + 0.5) * PANEL) / width, 1 - (TITLE_HEIGHT + HEADER_HEIGHT / 2) / height,
                    title, fontsize=FONT_SIZE + 1, ha="center", va="center", weight="bold")
    for r, row in enumerate(rows):
        label_y = height - TITLE_HEIGHT - HEADER_HEIGHT - r * (ROW_LABEL_HEIGHT + PANEL) - ROW_LABEL_HEIGHT / 2
        figure.text(MARGIN / width, label_y / height, row.label, fontsize=FONT_SIZE + 1, ha="left", va="center",
                    weight="bold", color="#203060", parse_math=False)
        for column, modality in enumerate(PAPER_ORDER):
            show_grey(panel(r, column), *sequences[modality])
        show_labels(panel(r, len(PAPER_ORDER)), gt_slice)
        for column, subset in enumerate(shown, start=len(PAPER_ORDER) + 1):
            axis = panel(r, column)
            if (row.label, subset.name) not in segmentations:
                axis.text(0.5, 0.5, "not evaluated", ha="center", va="center", fontsize=FONT_SIZE,
                          transform=axis.transAxes)
                continue
            show_labels(axis, segmentations[row.label, subset.name])
            scores = dice.get((row.trainer, case, subset.name), {})
            text = "\n".join(f"{region} {value:.2f}" for region, value in scores.items()) or "no score"
            axis.text(0.03, 0.97, text, transform=axis.transAxes, ha="left", va="top", fontsize=DICE_FONT_SIZE,
                      family="monospace", color="white",
                      bbox=dict(boxstyle="square,pad=0.2", facecolor="black", alpha=0.65, linewidth=0))
    legend_top = height - TITLE_HEIGHT - HEADER_HEIGHT - len(rows) * (ROW_LABEL_HEIGHT + PANEL)
    legend_space = legend_height(len(colours))
    figure.legend(handles=[Patch(facecolor=c.colour, label=c.legend) for c in colours], loc="center left",
                  bbox_to_anchor=(0, (legend_top - legend_space / 2) / height), ncol=LEGEND_COLUMNS,
                  fontsize=FONT_SIZE, frameon=False, handlelength=1.2, borderaxespad=0.2)
    for i, note in enumerate(notes):
        figure.text(MARGIN / width, (legend_top - legend_space - (i + 0.5) * NOTE_HEIGHT) / height, "note: " + note,
                    fontsize=FONT_SIZE, ha="left", va="center", style="italic")
    return figure


# ------------------------------------------------------------------------------------------------ evaluate's pictures

def prediction_files(folders: Mapping[str, str], case: str, file_ending: str) -> Dict[str, str]:
    """Subset name → this case's segmentation in each prediction folder (``evaluate``'s layout)."""
    return {subset: os.path.join(folder, case + file_ending) for subset, folder in folders.items()
            if os.path.isfile(os.path.join(folder, case + file_ending))}


def write_case_figures(out_dir: str, records: Sequence[Mapping], count: Union[int, str],
                       images: Mapping[str, Mapping[str, str]], labels: Mapping[str, str],
                       prediction_folders: Mapping[str, Mapping[str, str]], regions: Mapping[str, Sequence[int]],
                       file_ending: str, row_labels: Optional[Mapping[str, str]] = None,
                       progress: bool = True) -> Tuple[List[str], List[str]]:
    """Write ``out_dir/cases/CASE.png`` for the cases :func:`select_cases` picks from the first model's scores.

    ``images``: case → modality → file; ``labels``: case → ground-truth file; ``prediction_folders``: trainer (as
    in the records, in row order) → subset name → folder; ``row_labels``: trainer → the label on its row (default:
    the trainer). Pictures of an earlier run in ``out_dir/cases`` are removed first, as ``evaluate`` empties its
    prediction folders, so every picture shown is of this run. Returns the pictures written and the notes (columns
    left out).
    """
    from tqdm import tqdm

    trainers = list(prediction_folders)
    if not trainers:
        raise ValueError("no prediction folders to draw")
    folder = os.path.join(out_dir, "cases")
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".png"):
                os.remove(os.path.join(folder, name))
    cases = select_cases(records, count, trainer=trainers[0])
    if not cases:
        return [], []
    os.makedirs(folder, exist_ok=True)
    written, notes = [], []
    for case in tqdm(cases, desc="pictures", unit="case", disable=not progress, leave=False):
        rows = [FigureRow((row_labels or {}).get(t, t), t, prediction_files(prediction_folders[t], case, file_ending))
                for t in trainers]
        path = os.path.join(folder, f"{case}.png")
        notes += render_case_figure(path, case, images[case], labels[case], rows, regions, records)
        written.append(path)
    return written, list(dict.fromkeys(notes))


def write_pictures(out_dir: str, figures: Union[int, str], records: Sequence[Mapping],
                   case_files: Mapping[str, Mapping[str, str]], labels_dir: str, prediction_folders: Sequence,
                   regions: Mapping[str, Sequence[int]], file_ending: str) -> None:
    """``evaluate``'s ``OUT/cases/CASE.png`` for the ``--figures`` cases: a row per scored entry
    (:class:`~nnunet_missingmod.evaluation.scoring.PredictionFolder` items, routed ones included), in the order they
    were scored; ``case_files``: case -> modality -> image file."""
    from nnunet_missingmod.evaluation.scoring import list_label_files
    by_entry: Dict[str, Dict[str, str]] = {}
    for entry in prediction_folders:
        by_entry.setdefault(entry.trainer, {})[str(entry.subset)] = entry.folder
    written, notes = write_case_figures(out_dir, records, figures, case_files,
                                        list_label_files(labels_dir, file_ending), by_entry, regions, file_ending)
    if written:
        print(f"pictures of {len(written)} case(s) in {os.path.join(out_dir, 'cases')}"
              + "".join(f"; {note}" for note in notes))
