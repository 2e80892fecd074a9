"""Which label values make up each evaluated region (WT, TC, ET, ...).

Three sources, as the ``score`` command offers them:

* a dataset.json ``labels`` dict, read like nnU-Net's ``LabelManager``: a list/tuple value is a region, an int is a
  single label; ``background`` and ``ignore`` are skipped. The standard BraTS names become WT/TC/ET;
* a ``--regions`` string such as ``'WT=1,2,3;TC=2,3;ET=3'``;
* a preset per BraTS label convention (``--format``), for label maps in the original BraTS values.

Regions are an ordered ``dict`` name -> tuple of label values (see :data:`metrics.Regions`).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from nnunet_missingmod.errors import MissingModError

RegionDict = Dict[str, Tuple[int, ...]]

def _presets_from_formats() -> Dict[str, RegionDict]:
    """WT/TC/ET in each format's original label values, from the conversion format table (the one place that knows
    the label conventions): e.g. brats2021 WT=(1, 2, 4), TC=(1, 4), ET=(4,); brats2024's RC is in no region."""
    from nnunet_missingmod.conversion.formats import FORMATS
    return {key: {region: fmt.labels.region_values(region) for region in ("WT", "TC", "ET")}
            for key, fmt in FORMATS.items()}


REGION_PRESETS: Mapping[str, RegionDict] = _presets_from_formats()

_SHORT_NAMES = {"wholetumor": "WT", "wholetumour": "WT", "wt": "WT",
                "tumorcore": "TC", "tumourcore": "TC", "tc": "TC",
                "enhancingtumor": "ET", "enhancingtumour": "ET", "et": "ET"}


def short_region_name(name: str) -> str:
    """``"whole tumor"`` -> ``WT``, ``"tumor core"`` -> ``TC``, ``"enhancing tumor"`` -> ``ET`` (any case, with
    or without spaces/underscores, tumor or tumour); any other name is kept as it is."""
    return _SHORT_NAMES.get(re.sub(r"[\s_\-]", "", name.lower()), name)


def regions_from_labels(labels: Mapping[str, Any], source: str = "labels") -> RegionDict:
    """Regions from a dataset.json ``labels`` dict, e.g. ``{"background": 0, "whole tumor": [1, 2, 3],
    "tumor core": [2, 3], "enhancing tumor": [3]}`` -> ``{"WT": (1, 2, 3), "TC": (2, 3), "ET": (3,)}``.

    A plain label (``"NETC": 1``) becomes a one-value region, so label datasets are scored per label, as nnU-Net's
    own evaluation does. ``source`` names the file in error messages.
    """
    if not isinstance(labels, Mapping) or not labels:
        raise MissingModError(f"{source}: 'labels' must be a non-empty dict of name -> value(s), got {labels!r}")
    regions: RegionDict = {}
    for name, value in labels.items():
        if name in ("background", "ignore"):
            continue
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        try:
            values = tuple(int(v) for v in values)
        except (TypeError, ValueError):
            raise MissingModError(f"{source}: label {name!r} has non-integer value(s) {value!r}") from None
        if all(v == 0 for v in values):  # a background-only region, skipped like LabelManager does
            continue
        short = short_region_name(str(name))
        if short in regions:
            raise MissingModError(f"{source}: two labels give the region name {short!r}")
        regions[short] = values
    if not regions:
        raise MissingModError(f"{source}: 'labels' declares no foreground label or region")
    return regions


def load_dataset_json(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The parsed dataset.json; :class:`MissingModError` naming the file if it is missing or not JSON."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise MissingModError(f"dataset.json not found: {path}") from None
    except (OSError, ValueError) as e:
        raise MissingModError(f"cannot read {path}: {e}") from None
    if not isinstance(content, dict):
        raise MissingModError(f"{path}: expected a JSON object, got {type(content).__name__}")
    return content


def regions_from_dataset_json(path: Union[str, os.PathLike]) -> RegionDict:
    """Regions declared by the ``labels`` of an nnU-Net dataset.json (see :func:`regions_from_labels`)."""
    content = load_dataset_json(path)
    if "labels" not in content:
        raise MissingModError(f"{path}: no 'labels' entry")
    return regions_from_labels(content["labels"], source=str(path))


def parse_regions(text: str) -> RegionDict:
    """Parse ``'WT=1,2,3;TC=2,3;ET=3'`` (``;`` between regions, ``,`` or ``+`` between labels).

    Raises :class:`MissingModError` naming the faulty part.
    """
    regions: RegionDict = {}
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        name, sep, values_text = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise MissingModError(f"--regions: {part!r} is not NAME=LABEL[,LABEL...] (e.g. 'WT=1,2,3;TC=2,3;ET=3')")
        try:
            values = tuple(int(v) for v in re.split(r"[,+\s]+", values_text.strip()) if v)
        except ValueError:
            raise MissingModError(f"--regions: labels of {name!r} must be integers, got {values_text.strip()!r}") \
                from None
        if not values or any(v <= 0 for v in values):
            raise MissingModError(f"--regions: region {name!r} needs positive label values, got {values_text!r}")
        if name in regions:
            raise MissingModError(f"--regions: region {name!r} given twice")
        regions[name] = values
    if not regions:
        raise MissingModError(f"--regions: no region in {text!r} (e.g. 'WT=1,2,3;TC=2,3;ET=3')")
    return regions


def preset_regions(label_format: str) -> RegionDict:
    """Regions of a BraTS label convention: one of :data:`REGION_PRESETS`."""
    key = label_format.strip().lower()
    if key not in REGION_PRESETS:
        raise MissingModError(f"unknown label format {label_format!r}; expected one of {', '.join(REGION_PRESETS)}")
    return dict(REGION_PRESETS[key])


def resolve_regions(dataset_json: Optional[str] = None, regions_text: Optional[str] = None,
                    label_format: Optional[str] = None) -> RegionDict:
    """The regions to score: ``--regions`` or ``--format`` if given (at most one of them), else dataset.json's."""
    if regions_text is not None and label_format is not None:
        raise MissingModError("give either --regions or --format, not both")
    if regions_text is not None:
        return parse_regions(regions_text)
    if label_format is not None:
        return preset_regions(label_format)
    if dataset_json is not None:
        return regions_from_dataset_json(dataset_json)
    raise MissingModError("no regions to score: pass -djfile dataset.json, --regions 'WT=1,2,3;TC=2,3;ET=3' "
                          f"or --format ({', '.join(REGION_PRESETS)})")
