"""Write the robustness report of a list of records: metrics.csv, summary.json, summary.md and two plots.

Records are the long-format dicts of :mod:`nnunet_missingmod.evaluation.scoring` (keys ``trainer, case, subset,
n_modalities, region, dice, hd95``, then the lesion-wise ``lesion_dice, lesion_hd95, n_gt_lesions, n_tp, n_fp,
n_fn``, which records of an older metrics.csv lack). Aggregation rules, also written into the outputs:

* a subset cell is the mean ± sample sd (ddof=1) over cases of that subset;
* the ``mean`` column is the mean ± sd over cases of each case's mean over the subsets (equal to the mean of the
  subset means when every case has every subset);
* per number of sequences k: the mean over the subsets of size k of the subset means (CCSD's D̄_k); AURC uses them
  and needs all 15 subsets;
* the gap to the full set is subset mean − full-set mean;
* paired comparisons (two or more trainers): per region and metric, the per-case differences of the per-case means
  over the subsets both trainers have, tested with the two-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, zero differences dropped);
* paired intervals (two or more trainers, :class:`BootstrapSettings`): every model against the reference (the first
  trainer, or ``--reference``), per region, Dice (and lesion-wise Dice) and view: the complete scans
  (:data:`~nnunet_missingmod.modalities.FULL_SET`), the case's mean over the subsets both have, and the case's worst
  subset (each model's lowest value over those subsets). Per case the difference model − reference; a 95 %
  percentile bootstrap interval of their mean over cases (:func:`bootstrap_interval`) beside the Wilcoxon p of the
  same differences; summary.md ranks two models only where the interval excludes 0;
* lesion-wise (when every record has it): per subset the mean ± sd over cases of the per-case lesion-wise Dice and
  HD95 and the lesion counts summed over cases, in a table of its own (the whole-volume tables stay the default);
* records of subset ``all`` (no modality subset applies) have no cardinality: the tables then have one column
  ``all``, and robustness.png, the per-cardinality table and AURC are skipped with a note.
"""
from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.atomic_io import atomic_output, atomic_write_text
from nnunet_missingmod.evaluation.metrics import ONE_EMPTY_DICE, aurc, one_empty_hd95
from nnunet_missingmod.evaluation.scoring import BASE_FIELDS, LESION_FIELDS, NO_SUBSET, RECORD_FIELDS, Record
from nnunet_missingmod.modalities import FULL_SET, SUBSET_NAMES, SUBSETS

METRICS: Tuple[str, ...] = ("dice", "hd95")
METRIC_TITLES = {"dice": "Dice (0–1)", "hd95": "HD95 (mm)"}
_DECIMALS = {"dice": 3, "hd95": 2, "lesion_dice": 3, "lesion_hd95": 2}
LESION_METRICS: Tuple[str, ...] = ("lesion_dice", "lesion_hd95")
LESION_COUNTS: Tuple[str, ...] = ("n_gt_lesions", "n_tp", "n_fp", "n_fn")
CARDINALITIES: Tuple[int, ...] = (1, 2, 3, 4)

DEFAULT_BOOTSTRAP = 10000
"""Bootstrap resamples of the cases per paired interval (``--bootstrap``)."""
BOOTSTRAP_SEED = 0
"""Seed of ``numpy.random.default_rng`` for every paired interval: each interval starts a generator of its own
from it, so it does not depend on which other models, regions or views are reported."""
INTERVAL_VIEWS: Tuple[str, ...] = ("full_set", "mean_over_subsets", "worst_subset")
VIEW_TITLES = {"full_set": f"complete scans ({FULL_SET.name})", "mean_over_subsets": "mean over subsets",
               "worst_subset": "worst subset"}
INTERVAL_METRICS: Tuple[str, ...] = ("dice", "lesion_dice")
_METRIC_NAMES = {"dice": "Dice", "lesion_dice": "lesion-wise Dice"}
_BOOTSTRAP_BLOCK = 1 << 21  # resampled values held at once (rows of the index matrix per block × cases)


@dataclass(frozen=True)
class BootstrapSettings:
    """How the report's paired intervals are drawn (``--bootstrap``, ``--reference``), checked when built.

    Attributes:
        n_resamples: bootstrap resamples of the cases per interval; 0 = no intervals.
        reference: the model every other one is compared with; ``None`` = the first trainer of the records.
        seed: seed of ``numpy.random.default_rng`` (:data:`BOOTSTRAP_SEED`).
        level: coverage of the percentile interval, in (0, 1).
    """
    n_resamples: int = DEFAULT_BOOTSTRAP
    reference: Optional[str] = None
    seed: int = BOOTSTRAP_SEED
    level: float = 0.95

    def __post_init__(self) -> None:
        if isinstance(self.n_resamples, bool) or not isinstance(self.n_resamples, int) or self.n_resamples < 0:
            raise MissingModError(f"--bootstrap must be a whole number >= 0 (0: no intervals), "
                                  f"got {self.n_resamples!r}")
        if self.reference is not None and (not isinstance(self.reference, str) or not self.reference.strip()):
            raise MissingModError(f"--reference must name a model, got {self.reference!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise MissingModError(f"the bootstrap seed must be a whole number >= 0, got {self.seed!r}")
        if not 0 < self.level < 1:
            raise MissingModError(f"the interval level must lie in (0, 1), got {self.level!r}")


# ----------------------------------------------------------------------------------------------------- entry point

def write_report(records: Sequence[Record], out_dir: str, conventions: Mapping[str, Any],
                 make_plots: bool = True, bootstrap: BootstrapSettings = BootstrapSettings()) -> Dict[str, Any]:
    """Write metrics.csv, summary.json, summary.md, and (``make_plots``) robustness.png and subsets.png into
    ``out_dir`` (created if needed); every file is written atomically. Returns the summary (summary.json's
    content).

    Args:
        records: long-format records, one per trainer, case, subset and region (see module doc).
        out_dir: output folder.
        conventions: metric conventions, e.g. :func:`nnunet_missingmod.evaluation.metrics.conventions`; copied into
            summary.json and summary.md.
        bootstrap: resamples, reference model and seed of the paired intervals.
    """
    table = RecordTable(records)
    os.makedirs(out_dir, exist_ok=True)
    summary = summarise(table, conventions, bootstrap)
    notes = summary["notes"]
    if make_plots:
        if table.has_cardinality:
            plot_robustness(summary, os.path.join(out_dir, "robustness.png"))
        else:
            notes.append("robustness.png not written: the records have no modality subsets (subset 'all').")
        plot_subset_heatmap(summary, os.path.join(out_dir, "subsets.png"))
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), records_to_csv(table.records))
    atomic_write_text(os.path.join(out_dir, "summary.json"), json.dumps(summary, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "summary.md"), summary_markdown(summary))
    return summary


# ---------------------------------------------------------------------------------------------------- record table

class RecordTable:
    """Validated records with the orders used everywhere: trainers and regions as first seen, subsets in
    :data:`SUBSETS` order (then ``all``, then unknown names as first seen), cases sorted."""

    def __init__(self, records: Iterable[Record]):
        self.records: List[Record] = [_validated(r, i) for i, r in enumerate(records)]
        if not self.records:
            raise MissingModError("no records to report: nothing was scored")
        self.trainers = _unique(r["trainer"] for r in self.records)
        self.regions = _unique(r["region"] for r in self.records)
        seen_subsets = _unique(r["subset"] for r in self.records)
        known = [s for s in SUBSET_NAMES if s in seen_subsets]
        self.subsets = known + [s for s in seen_subsets if s not in SUBSET_NAMES]
        self.cases = sorted({r["case"] for r in self.records})
        self.cardinality = {s.name: s.cardinality for s in SUBSETS}
        self.has_cardinality = bool(known)
        self.has_lesionwise = all(r["lesion_dice"] is not None for r in self.records)
        self._values: Dict[Tuple[str, str, str], Dict[str, Dict[str, float]]] = {}
        for r in self.records:
            per_case = self._values.setdefault((r["trainer"], r["region"], r["subset"]), {})
            if r["case"] in per_case:
                raise MissingModError(f"two records for trainer {r['trainer']!r}, case {r['case']!r}, subset "
                                      f"{r['subset']!r}, region {r['region']!r}")
            per_case[r["case"]] = {m: r[m] for m in METRICS + LESION_METRICS + LESION_COUNTS}
        order = {name: i for i, name in enumerate(self.subsets)}
        self.records.sort(key=lambda r: (self.trainers.index(r["trainer"]), r["case"], order[r["subset"]],
                                         self.regions.index(r["region"])))

    def values(self, trainer: str, region: str, subset: str, metric: str) -> Dict[str, float]:
        """case -> value (empty dict if that combination was not scored)."""
        return {case: v[metric] for case, v in self._values.get((trainer, region, subset), {}).items()}

    def subsets_of(self, trainer: str, region: str) -> List[str]:
        return [s for s in self.subsets if (trainer, region, s) in self._values]

    def per_case_mean(self, trainer: str, region: str, metric: str,
                      subsets: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """case -> mean over ``subsets`` (default: all of this trainer's) of the metric; cases lacking any of
        those subsets are left out."""
        subsets = self.subsets_of(trainer, region) if subsets is None else list(subsets)
        columns = [self.values(trainer, region, s, metric) for s in subsets]
        if not columns:
            return {}
        common = set(columns[0]).intersection(*columns[1:])
        return {case: float(np.mean([c[case] for c in columns])) for case in sorted(common)}

    def per_case_min(self, trainer: str, region: str, metric: str, subsets: Sequence[str]) -> Dict[str, float]:
        """case -> the lowest value of the metric over ``subsets`` (the case's worst subset for Dice); cases lacking
        any of those subsets are left out."""
        columns = [self.values(trainer, region, s, metric) for s in subsets]
        if not columns:
            return {}
        common = set(columns[0]).intersection(*columns[1:])
        return {case: float(min(c[case] for c in columns)) for case in sorted(common)}


def _validated(record: Mapping[str, Any], index: int) -> Record:
    """A typed copy of a record; the lesion-wise fields are ``None`` where absent or empty (an older metrics.csv),
    and must be all present or all absent."""
    missing = [k for k in BASE_FIELDS if k not in record]
    if missing:
        raise MissingModError(f"record {index} lacks {', '.join(missing)}: {dict(record)!r}")
    clean = {k: record.get(k) for k in RECORD_FIELDS}
    for key in LESION_FIELDS:
        if clean[key] == "":
            clean[key] = None
    given = [k for k in LESION_FIELDS if clean[k] is not None]
    if given and len(given) < len(LESION_FIELDS):
        raise MissingModError(f"record {index} has only some lesion-wise fields ({', '.join(given)}): "
                              f"{dict(record)!r}")
    for metric in METRICS + (LESION_METRICS if given else ()):
        value = float(clean[metric])
        if not math.isfinite(value):
            raise MissingModError(f"record {index} has a non-finite {metric}: {dict(record)!r}")
        clean[metric] = value
    for count in LESION_COUNTS if given else ():
        clean[count] = int(clean[count])
    clean["trainer"], clean["case"], clean["region"] = str(clean["trainer"]), str(clean["case"]), str(clean["region"])
    clean["subset"] = str(clean["subset"])
    if clean["n_modalities"] in ("", None):
        clean["n_modalities"] = None
    else:
        clean["n_modalities"] = int(clean["n_modalities"])
    return clean


def _unique(items: Iterable[Any]) -> List[Any]:
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------------------------- aggregation

def describe(values: Iterable[float]) -> Dict[str, Optional[float]]:
    """``{"mean", "sd", "n"}``; sd is the sample sd (ddof=1), ``None`` for fewer than two values."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(np.std(array, ddof=1)) if array.size > 1 else None
    return {"mean": float(np.mean(array)), "sd": sd, "n": int(array.size)}


def summarise(table: RecordTable, conventions: Mapping[str, Any],
              bootstrap: BootstrapSettings = BootstrapSettings()) -> Dict[str, Any]:
    """Everything summary.json holds (see module doc); keys are trainer -> region -> ..."""
    one_empty = one_empty_hd95(conventions["hd95_variant"])
    summary: Dict[str, Any] = {
        "conventions": dict(conventions),
        "aggregation": _aggregation_text(bootstrap, one_empty),
        "trainers": table.trainers,
        "regions": table.regions,
        "subsets": table.subsets,
        "cases": table.cases,
        "per_subset": {}, "mean_over_subsets": {}, "gap_to_full_set": {}, "per_cardinality": {}, "aurc": {},
        "one_empty_rule_count": {},
        "paired_comparisons": [],
        "lesionwise": None,
        "notes": [],
    }
    for trainer in table.trainers:
        for key in ("per_subset", "mean_over_subsets", "gap_to_full_set", "per_cardinality", "aurc",
                    "one_empty_rule_count"):
            summary[key][trainer] = {}
        for region in table.regions:
            per_subset = {s: {m: describe(table.values(trainer, region, s, m).values()) for m in METRICS}
                          for s in table.subsets_of(trainer, region)}
            summary["per_subset"][trainer][region] = per_subset
            summary["mean_over_subsets"][trainer][region] = {
                m: describe(table.per_case_mean(trainer, region, m).values()) for m in METRICS}
            summary["gap_to_full_set"][trainer][region] = _gap_to_full_set(per_subset)
            by_k = _per_cardinality(table, per_subset)
            summary["per_cardinality"][trainer][region] = by_k
            summary["aurc"][trainer][region] = _aurc_entry(by_k)
            summary["one_empty_rule_count"][trainer][region] = _one_empty_count(table, trainer, region, one_empty)
    summary["paired_comparisons"] = paired_comparisons(table)
    summary["paired_intervals"] = paired_intervals(table, bootstrap)
    if table.has_lesionwise:
        summary["lesionwise"] = lesionwise_summary(table, conventions)
    _add_notes(table, summary)
    return summary


def lesionwise_summary(table: RecordTable, conventions: Mapping[str, Any]) -> Dict[str, Any]:
    """summary.json's lesion-wise block: the protocol, then trainer -> region -> subset -> mean ± sd over cases of
    the lesion-wise Dice and HD95 and the lesion counts summed over cases, and the mean over subsets."""
    block: Dict[str, Any] = {"protocol": conventions.get("lesion_protocol"),
                             "rules": conventions.get("lesionwise"), "per_subset": {}, "mean_over_subsets": {}}
    for trainer in table.trainers:
        block["per_subset"][trainer], block["mean_over_subsets"][trainer] = {}, {}
        for region in table.regions:
            per_subset = {}
            for subset in table.subsets_of(trainer, region):
                entry: Dict[str, Any] = {m: describe(table.values(trainer, region, subset, m).values())
                                         for m in LESION_METRICS}
                entry.update({c: int(sum(table.values(trainer, region, subset, c).values())) for c in LESION_COUNTS})
                per_subset[subset] = entry
            block["per_subset"][trainer][region] = per_subset
            block["mean_over_subsets"][trainer][region] = {
                m: describe(table.per_case_mean(trainer, region, m).values()) for m in LESION_METRICS}
    return block


def _aggregation_text(bootstrap: BootstrapSettings, one_empty: float) -> Dict[str, str]:
    return {
        "mean_column": "mean ± sd over cases of each case's mean over the subsets",
        "per_cardinality": "mean over the subsets with k sequences of the per-subset means",
        "gap_to_full_set": f"subset mean − mean of the full set {FULL_SET.name}",
        "paired_comparisons": "per region and metric: per-case differences (trainer_a − trainer_b) of the per-case "
                              "means over the subsets both have; two-sided Wilcoxon signed-rank test "
                              "(scipy.stats.wilcoxon, zero differences dropped)",
        "paired_intervals": _interval_text(bootstrap),
        "one_empty_rule_count": f"records scored by the exactly-one-empty rule (Dice {ONE_EMPTY_DICE:g}, "
                                f"HD95 {one_empty:g} mm)",
    }


def _gap_to_full_set(per_subset: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> Dict[str, Dict[str, float]]:
    if FULL_SET.name not in per_subset:
        return {}
    full = per_subset[FULL_SET.name]
    return {s: {m: stats[m]["mean"] - full[m]["mean"] for m in METRICS} for s, stats in per_subset.items()
            if s != NO_SUBSET and s in SUBSET_NAMES}


def _per_cardinality(table: RecordTable, per_subset: Mapping[str, Mapping[str, Mapping[str, Any]]]
                     ) -> Dict[str, Dict[str, Any]]:
    """"k" -> {"dice": D̄_k, "hd95": ..., "subsets": [...], "complete": all subsets of size k present}."""
    result = {}
    for k in CARDINALITIES:
        names = [s for s in per_subset if table.cardinality.get(s) == k]
        if not names:
            continue
        entry: Dict[str, Any] = {m: float(np.mean([per_subset[s][m]["mean"] for s in names])) for m in METRICS}
        entry["subsets"] = names
        entry["complete"] = len(names) == sum(1 for s in SUBSETS if s.cardinality == k)
        result[str(k)] = entry
    return result


def _aurc_entry(by_k: Mapping[str, Mapping[str, Any]]) -> Optional[Dict[str, float]]:
    """AURC of the mean Dice, only when every subset of every size was scored (CCSD's definition)."""
    if not all(str(k) in by_k and by_k[str(k)]["complete"] for k in CARDINALITIES):
        return None
    raw, normalised = aurc({k: by_k[str(k)]["dice"] for k in CARDINALITIES})
    return {"raw": raw, "normalised": normalised}


def _one_empty_count(table: RecordTable, trainer: str, region: str, one_empty: float) -> int:
    return sum(1 for r in table.records if r["trainer"] == trainer and r["region"] == region
               and r["dice"] == ONE_EMPTY_DICE and r["hd95"] == one_empty)


def paired_comparisons(table: RecordTable) -> List[Dict[str, Any]]:
    """One entry per trainer pair, region and metric (see module doc); empty for a single trainer."""
    comparisons = []
    for trainer_a, trainer_b in itertools.combinations(table.trainers, 2):
        for region in table.regions:
            shared = [s for s in table.subsets_of(trainer_a, region) if s in table.subsets_of(trainer_b, region)]
            for metric in METRICS:
                a = table.per_case_mean(trainer_a, region, metric, shared)
                b = table.per_case_mean(trainer_b, region, metric, shared)
                cases = sorted(set(a) & set(b))
                differences = {c: a[c] - b[c] for c in cases}
                p_value, note = wilcoxon_p(list(differences.values()))
                comparisons.append({
                    "trainer_a": trainer_a, "trainer_b": trainer_b, "region": region, "metric": metric,
                    "subsets": shared, "n_cases": len(cases),
                    "mean_a": float(np.mean([a[c] for c in cases])) if cases else None,
                    "mean_b": float(np.mean([b[c] for c in cases])) if cases else None,
                    "mean_difference": float(np.mean(list(differences.values()))) if cases else None,
                    "median_difference": float(np.median(list(differences.values()))) if cases else None,
                    "wilcoxon_p": p_value, "wilcoxon_note": note,
                    "per_case_difference": differences,
                })
    return comparisons


def wilcoxon_p(differences: Sequence[float],
               on: str = "per-case means over the shared subsets") -> Tuple[Optional[float], str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences, or ``None`` and the reason; ``on`` says what
    was differenced, for the note."""
    from scipy.stats import wilcoxon
    nonzero = [d for d in differences if d != 0]
    if not nonzero:
        return None, "no non-zero differences"
    try:
        result = wilcoxon(nonzero, alternative="two-sided")
    except ValueError as e:
        return None, str(e)
    note = f"on {on}"
    if len(nonzero) < 6:
        note += f"; only {len(nonzero)} non-zero differences, so p cannot be small"
    return float(result.pvalue), note


def bootstrap_interval(differences: Sequence[float], n_resamples: int, seed: int = BOOTSTRAP_SEED,
                       level: float = 0.95) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (Efron & Tibshirani, *An Introduction to the
    Bootstrap*, 1993, ch. 13).

    Args:
        differences: per-case differences, shape ``(n,)``, ``n >= 1``, in the report's case order.
        n_resamples: B, the number of resamples (>= 1).
        seed: seed of ``numpy.random.default_rng``.
        level: coverage, in (0, 1).
    Returns:
        ``(low, high)``: with ``rng = numpy.random.default_rng(seed)``, ``indices = rng.integers(0, n, size=(B, n))``
        (drawn in blocks of rows, which the generator yields identically to one draw) and
        ``means = differences[indices].mean(axis=1)``, the ``100·(1 − level)/2`` and ``100·(1 + level)/2``
        percentiles of ``means`` (``numpy.percentile``, linear interpolation). Identical differences d give
        ``(d, d)``.
    """
    values = np.asarray(differences, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D array of differences, got shape {values.shape}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a whole number >= 1, got {n_resamples!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    rng = np.random.default_rng(seed)
    n = values.size
    rows = max(1, _BOOTSTRAP_BLOCK // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    low, high = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


def paired_intervals(table: RecordTable, bootstrap: BootstrapSettings = BootstrapSettings()) -> Dict[str, Any]:
    """summary.json's ``paired_intervals``: the settings and one entry per model other than the reference, region,
    metric (:data:`INTERVAL_METRICS`, lesion-wise only where the records have it) and view
    (:data:`INTERVAL_VIEWS`; ``full_set`` only where both have the full set); see the module doc.

    Each entry holds ``model, reference, region, metric, view, subsets, n_cases``, the two means, the mean
    difference (model − reference), ``ci_low, ci_high`` (``None`` below two cases), ``ranking`` (``"model >
    reference"``, ``"reference > model"`` or ``None`` when the interval holds 0), the Wilcoxon p of the same
    differences and the per-case differences.
    """
    block: Dict[str, Any] = {"reference": None, "n_resamples": bootstrap.n_resamples, "seed": bootstrap.seed,
                             "level": bootstrap.level, "comparisons": []}
    if len(table.trainers) < 2 or bootstrap.n_resamples == 0:
        return block
    reference = bootstrap.reference if bootstrap.reference is not None else table.trainers[0]
    if reference not in table.trainers:
        raise MissingModError(f"--reference {reference!r} is not one of the report's models: "
                              + ", ".join(table.trainers))
    block["reference"] = reference
    metrics = INTERVAL_METRICS if table.has_lesionwise else INTERVAL_METRICS[:1]
    for model in (t for t in table.trainers if t != reference):
        for region in table.regions:
            shared = [s for s in table.subsets_of(model, region) if s in table.subsets_of(reference, region)]
            for metric in metrics:
                for view in INTERVAL_VIEWS:
                    entry = _interval_entry(table, model, reference, region, metric, view, shared, bootstrap)
                    if entry is not None:
                        block["comparisons"].append(entry)
    return block


def _view_values(table: RecordTable, trainer: str, region: str, metric: str, view: str,
                 shared: Sequence[str]) -> Dict[str, float]:
    if view == "full_set":
        return table.values(trainer, region, FULL_SET.name, metric)
    if view == "mean_over_subsets":
        return table.per_case_mean(trainer, region, metric, shared)
    return table.per_case_min(trainer, region, metric, shared)


def _interval_entry(table: RecordTable, model: str, reference: str, region: str, metric: str, view: str,
                    shared: Sequence[str], bootstrap: BootstrapSettings) -> Optional[Dict[str, Any]]:
    if not shared or (view == "full_set" and FULL_SET.name not in shared):
        return None
    subsets = [FULL_SET.name] if view == "full_set" else list(shared)
    a = _view_values(table, model, region, metric, view, shared)
    b = _view_values(table, reference, region, metric, view, shared)
    cases = sorted(set(a) & set(b))
    if not cases:
        return None
    differences = np.array([a[c] - b[c] for c in cases])
    low = high = None
    ranking = None
    if len(cases) >= 2:
        low, high = bootstrap_interval(differences, bootstrap.n_resamples, bootstrap.seed, bootstrap.level)
        if low > 0:
            ranking = f"{model} > {reference}"
        elif high < 0:
            ranking = f"{reference} > {model}"
    p_value, note = wilcoxon_p(list(differences), on=f"per-case {VIEW_TITLES[view]}")
    return {"model": model, "reference": reference, "region": region, "metric": metric, "view": view,
            "subsets": subsets, "n_cases": len(cases),
            "mean_model": float(np.mean([a[c] for c in cases])),
            "mean_reference": float(np.mean([b[c] for c in cases])),
            "mean_difference": float(np.mean(differences)), "ci_low": low, "ci_high": high, "ranking": ranking,
            "wilcoxon_p": p_value, "wilcoxon_note": note,
            "per_case_difference": {c: float(d) for c, d in zip(cases, differences)}}


def _interval_text(bootstrap: BootstrapSettings) -> str:
    if bootstrap.n_resamples == 0:
        return "off (--bootstrap 0)"
    reference = bootstrap.reference or "the first trainer"
    return (f"every model against {reference}, per region, for Dice and lesion-wise Dice: per-case differences "
            f"(model − reference) on the complete scans ({FULL_SET.name}), on the case's mean over the subsets both "
            "have, and on the case's worst subset (each model's lowest value over those subsets); "
            f"{100 * bootstrap.level:g} % percentile bootstrap interval of their mean: {bootstrap.n_resamples} "
            f"resamples of the cases with replacement, numpy default_rng(seed={bootstrap.seed}) per interval; "
            "two-sided Wilcoxon p of the same differences; a ranking only where the interval excludes 0")


def _add_notes(table: RecordTable, summary: Dict[str, Any]) -> None:
    notes = summary["notes"]
    if not table.has_cardinality:
        notes.append("no modality subsets in the records (subset 'all'): no per-cardinality means, AURC or gap to "
                     "the full set.")
    elif any(v is None for per_region in summary["aurc"].values() for v in per_region.values()):
        notes.append("AURC needs all 15 subsets; it is left empty where some were not scored.")
    counts = {(t, r): len(table.per_case_mean(t, r, "dice")) for t in table.trainers for r in table.regions}
    if len(set(counts.values())) > 1:
        notes.append("trainers or regions were scored on different numbers of cases: "
                     + ", ".join(f"{t}/{r}: {n}" for (t, r), n in counts.items()))


# ------------------------------------------------------------------------------------------------------- outputs

def records_to_csv(records: Sequence[Record]) -> str:
    """metrics.csv content: header :data:`RECORD_FIELDS` (the whole-volume columns first, then the lesion-wise
    ones), one row per record, full float precision, ``n_modalities`` empty for subset ``all``, lesion-wise cells
    empty for records without them."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    for r in records:
        writer.writerow(["" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                         for k in RECORD_FIELDS])
    return buffer.getvalue()


def read_metrics_csv(path: str) -> List[Record]:
    """Records back from a metrics.csv written by :func:`write_report`, also one of before the lesion-wise columns
    (their fields are then ``None``)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [_validated(row, i) for i, row in enumerate(rows)]


def summary_markdown(summary: Mapping[str, Any]) -> str:
    """summary.md: conventions, then the Dice and HD95 tables (rows region × trainer, columns the subsets in
    :data:`SUBSETS` order + mean), the gap to the full set, per-cardinality means, AURC, paired comparisons
    (Wilcoxon) and the paired differences against the reference with their bootstrap intervals."""
    lines = ["# Robustness to missing MRI sequences", "", "## Conventions", ""]
    lines += [f"- **{key}**: {value}" for key, value in summary["conventions"].items()]
    lines += [f"- **{key}**: {value}" for key, value in summary["aggregation"].items()]
    lines += ["", f"{len(summary['cases'])} case(s); trainers: {', '.join(summary['trainers'])}.", ""]
    for metric in METRICS:
        lines += [f"## {METRIC_TITLES[metric]} per subset of available sequences", ""]
        lines += _subset_table(summary, metric) + [""]
    if summary.get("lesionwise"):
        lines += _lesionwise_section(summary["lesionwise"], summary["regions"])
    if any(summary["gap_to_full_set"][t][r] for t in summary["trainers"] for r in summary["regions"]):
        lines += [f"## Gap to the full set (subset mean − {FULL_SET.name} mean)", ""]
        for metric in METRICS:
            lines += [f"{METRIC_TITLES[metric]}:", ""] + _gap_table(summary, metric) + [""]
    if any(summary["per_cardinality"][t][r] for t in summary["trainers"] for r in summary["regions"]):
        lines += ["## Mean per number of available sequences", ""] + _cardinality_table(summary) + [""]
        lines += ["## AURC (Dice)", ""] + _aurc_table(summary) + [""]
    if summary["paired_comparisons"]:
        lines += ["## Paired comparisons", "",
                  "Per-case means over the subsets both trainers have; two-sided Wilcoxon signed-rank test "
                  "(scipy.stats.wilcoxon) on the per-case differences A − B.", ""]
        lines += _paired_table(summary) + [""]
    intervals = summary.get("paired_intervals") or {}
    if intervals.get("comparisons"):
        lines += _interval_section(intervals)
    lines += ["## Cases scored by the one-empty rule", ""] + _one_empty_table(summary) + [""]
    if summary["notes"]:
        lines += ["## Notes", ""] + [f"- {note}" for note in summary["notes"]] + [""]
    return "\n".join(lines)


def _row_labels(summary: Mapping[str, Any]) -> List[Tuple[str, str]]:
    return [(region, trainer) for region in summary["regions"] for trainer in summary["trainers"]]


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _mean_sd(stats: Optional[Mapping[str, Any]], metric: str) -> str:
    if not stats or stats["mean"] is None:
        return ""
    decimals = _DECIMALS[metric]
    sd = "–" if stats["sd"] is None else f"{stats['sd']:.{decimals}f}"
    return f"{stats['mean']:.{decimals}f} ± {sd}"


def _number(value: Optional[float], metric: str, signed: bool = False) -> str:
    if value is None:
        return ""
    return f"{value:+.{_DECIMALS[metric]}f}" if signed else f"{value:.{_DECIMALS[metric]}f}"


def _subset_table(summary: Mapping[str, Any], metric: str) -> List[str]:
    header = ["region", "trainer"] + list(summary["subsets"]) + ["mean"]
    rows = []
    for region, trainer in _row_labels(summary):
        per_subset = summary["per_subset"][trainer][region]
        cells = [_mean_sd(per_subset.get(s, {}).get(metric), metric) for s in summary["subsets"]]
        rows.append([region, trainer] + cells + [_mean_sd(summary["mean_over_subsets"][trainer][region][metric],
                                                          metric)])
    return _markdown_table(header, rows)


def _lesionwise_section(block: Mapping[str, Any], regions: Sequence[str]) -> List[str]:
    """The lesion-wise table in the BraTS papers' layout: a row per trainer and subset, per region the lesion-wise
    Dice, then per region the lesion-wise HD95; the protocol is named above it. Then the lesion counts."""
    from nnunet_missingmod.evaluation.lesionwise import LESION_PROTOCOLS
    protocol = LESION_PROTOCOLS.get(block["protocol"] or "")
    named = f"{protocol.describe()} (--lesion-protocol {block['protocol']})" if protocol else "protocol not recorded"
    lines = ["## Lesion-wise scores per subset of available sequences", "", f"Protocol: {named}.", ""]
    header = (["trainer", "subset"] + [f"{r} lesion-wise Dice" for r in regions]
              + [f"{r} lesion-wise HD95 (mm)" for r in regions])
    rows, count_rows = [], []
    for trainer, per_region in block["per_subset"].items():
        subsets = list(dict.fromkeys(s for r in regions for s in per_region[r]))
        for subset in subsets:
            rows.append([trainer, subset] + [_mean_sd(per_region[r].get(subset, {}).get(m), m)
                                             for m in LESION_METRICS for r in regions])
            count_rows.append([trainer, subset] + [_counts_cell(per_region[r].get(subset)) for r in regions])
        if len(subsets) > 1:
            means = block["mean_over_subsets"][trainer]
            rows.append([trainer, "mean"] + [_mean_sd(means[r][m], m) for m in LESION_METRICS for r in regions])
    lines += _markdown_table(header, rows) + [""]
    lines += ["Lesions summed over cases: ground truth / true positive / false positive / false negative.", ""]
    lines += _markdown_table(["trainer", "subset"] + list(regions), count_rows) + [""]
    return lines


def _counts_cell(entry: Optional[Mapping[str, Any]]) -> str:
    return "" if not entry else " / ".join(str(entry[c]) for c in LESION_COUNTS)


def _gap_table(summary: Mapping[str, Any], metric: str) -> List[str]:
    subsets = [s for s in summary["subsets"] if s in SUBSET_NAMES and s != FULL_SET.name]
    rows = []
    for region, trainer in _row_labels(summary):
        gaps = summary["gap_to_full_set"][trainer][region]
        rows.append([region, trainer] + [_number(gaps.get(s, {}).get(metric), metric, signed=True)
                                         for s in subsets])
    return _markdown_table(["region", "trainer"] + subsets, rows)


def _cardinality_table(summary: Mapping[str, Any]) -> List[str]:
    header = ["region", "trainer"] + [f"{METRIC_TITLES[m]}, {k} seq." for m in METRICS for k in CARDINALITIES]
    rows = []
    for region, trainer in _row_labels(summary):
        by_k = summary["per_cardinality"][trainer][region]
        rows.append([region, trainer] + [_number(by_k.get(str(k), {}).get(m), m) for m in METRICS
                                         for k in CARDINALITIES])
    return _markdown_table(header, rows)


def _aurc_table(summary: Mapping[str, Any]) -> List[str]:
    rows = []
    for region, trainer in _row_labels(summary):
        entry = summary["aurc"][trainer][region]
        rows.append([region, trainer, "" if entry is None else f"{entry['raw']:.3f}",
                     "" if entry is None else f"{entry['normalised']:.3f}"])
    return _markdown_table(["region", "trainer", "AURC (raw, 0–3)", "AURC / 3 (0–1)"], rows)


def _paired_table(summary: Mapping[str, Any]) -> List[str]:
    rows = []
    for c in summary["paired_comparisons"]:
        metric = c["metric"]
        p = "" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
        rows.append([c["region"], METRIC_TITLES[metric], c["trainer_a"], c["trainer_b"], str(c["n_cases"]),
                     _number(c["mean_a"], metric), _number(c["mean_b"], metric),
                     _number(c["mean_difference"], metric, signed=True), p])
    return _markdown_table(["region", "metric", "A", "B", "n cases", "mean A", "mean B", "mean A − B",
                            "Wilcoxon p"], rows)


def _interval_section(block: Mapping[str, Any]) -> List[str]:
    """Per model against the reference: mean difference, the bootstrap interval, Wilcoxon p and the ranking (only
    where the interval excludes 0, else —)."""
    level = f"{100 * block['level']:g} %"
    lines = [f"## Paired differences against {block['reference']} ({level} bootstrap intervals)", "",
             f"Per case: model − {block['reference']} (reference). Views: {VIEW_TITLES['full_set']}, the case's "
             "mean over the subsets both models have, the case's worst subset (each model's lowest value). "
             f"{level} percentile bootstrap interval of the mean difference ({block['n_resamples']} resamples of the "
             f"cases, numpy default_rng(seed={block['seed']})); two-sided Wilcoxon p of the same differences. "
             "**ranking** names the better model only where the interval excludes 0, else —.", ""]
    rows = []
    for c in block["comparisons"]:
        interval = "" if c["ci_low"] is None else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
        p = "" if c["wilcoxon_p"] is None else f"{c['wilcoxon_p']:.3g}"
        rows.append([c["region"], _METRIC_NAMES[c["metric"]], VIEW_TITLES[c["view"]], c["model"], str(c["n_cases"]),
                     _number(c["mean_model"], c["metric"]), _number(c["mean_reference"], c["metric"]),
                     _number(c["mean_difference"], c["metric"], signed=True), interval, p, c["ranking"] or "—"])
    lines += _markdown_table(["region", "metric", "view", "model", "n cases", "mean model", "mean reference",
                              "mean difference", f"{level} interval", "Wilcoxon p", "ranking"], rows)
    return lines + [""]


def _one_empty_table(summary: Mapping[str, Any]) -> List[str]:
    rows = [[region, trainer, str(summary["one_empty_rule_count"][trainer][region])]
            for region, trainer in _row_labels(summary)]
    return _markdown_table(["region", "trainer", "records (case × subset)"], rows)


# ------------------------------------------------------------------------------------------------------ plots

def plot_robustness(summary: Mapping[str, Any], path: str) -> None:
    """Mean Dice vs number of available sequences: a panel per region, a line per trainer."""
    from matplotlib.figure import Figure
    regions = summary["regions"]
    figure = Figure(figsize=(4.0 * len(regions), 3.6), layout="constrained")
    axes = figure.subplots(1, len(regions), squeeze=False)[0]
    for ax, region in zip(axes, regions):
        for trainer in summary["trainers"]:
            by_k = summary["per_cardinality"][trainer][region]
            ks = [k for k in CARDINALITIES if str(k) in by_k]
            ax.plot(ks, [by_k[str(k)]["dice"] for k in ks], marker="o", label=trainer or "(unnamed)")
        ax.set_title(region)
        ax.set_xlabel("number of available sequences")
        ax.set_xticks(CARDINALITIES)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice (0–1)")
    axes[0].legend(fontsize="small")
    _atomic_savefig(figure, path)


def plot_subset_heatmap(summary: Mapping[str, Any], path: str) -> None:
    """Mean Dice per subset (rows, fixed order) and region (columns), a panel per trainer, values written in."""
    from matplotlib.figure import Figure
    subsets, regions, trainers = summary["subsets"], summary["regions"], summary["trainers"]
    figure = Figure(figsize=(1.2 + 1.3 * len(regions) * len(trainers) + 1.5, 1.2 + 0.35 * len(subsets)),
                    layout="constrained")
    axes = figure.subplots(1, len(trainers), squeeze=False)[0]
    image = None
    for ax, trainer in zip(axes, trainers):
        values = np.full((len(subsets), len(regions)), np.nan)
        for j, region in enumerate(regions):
            per_subset = summary["per_subset"][trainer][region]
            for i, s in enumerate(subsets):
                if s in per_subset:
                    values[i, j] = per_subset[s]["dice"]["mean"]
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(regions)), regions)
        ax.set_yticks(range(len(subsets)), subsets if ax is axes[0] else [""] * len(subsets), fontsize=8)
        ax.set_title(trainer or "(unnamed)", fontsize=9)
    figure.colorbar(image, ax=list(axes), label="mean Dice (0–1)", shrink=0.8)
    _atomic_savefig(figure, path)


# ------------------------------------------------------------------------------------------------------- files

def _atomic_savefig(figure: Any, path: str) -> None:
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
