"""``evaluate -num_parts N -part_id I`` and ``evaluate-merge``: one evaluation split over N calls, as
``nnUNetv2_predict`` splits prediction (the cases sorted, ``cases[part_id::num_parts]``), merged into the report a
single call writes.

Every part writes into the same ``OUT`` (each holds OUT's lock shared and its own part's exclusively,
:func:`~nnunet_missingmod.atomic_io.claim_folder`):

* ``OUT/predictions/<model>/<subset>/<case>``: its cases' predictions, each written atomically (a file there is
  complete);
* ``OUT/parts/partIofN/<case>.json``: the records of one case (every entry, subset and region), written atomically
  once the case is scored;
* ``OUT/parts/partIofN.json``: the part's manifest: the settings that decide the records, the sha256 of every
  checkpoint, the part's cases and what the merge needs (entries in scoring order, regions, file ending, image
  files); ``"finished": true`` once every case is scored.

A rerun of a part (after SIGTERM, a kill, a crash) keeps every prediction and score file already there and makes
only the missing ones, provided its manifest names the same settings, cases and checkpoints; a changed checkpoint
(or setting) is refused, never mixed. A part without a manifest starts clean: its cases' files of any earlier run
are removed first. ``evaluate-merge OUT`` checks that all N manifests exist, are finished and agree, and writes
metrics.csv, summary.json, summary.md, the plots and the case pictures from the parts' records, in the order one
call writes them, so the report is the same as a run without parts.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_missingmod.atomic_io import atomic_write_text, claim_folder, remove_stale_temporaries
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.faults import die_with_parent

PARTS_FOLDER = "parts"
MANIFEST_FORMAT = 1
_MANIFEST_NAME = re.compile(r"part(\d+)of(\d+)\.json")


def part_name(part_id: int, num_parts: int) -> str:
    return f"part{part_id}of{num_parts}"


def parts_folder(out_dir: str) -> str:
    return os.path.join(out_dir, PARTS_FOLDER)


def manifest_path(out_dir: str, part_id: int, num_parts: int) -> str:
    return os.path.join(parts_folder(out_dir), part_name(part_id, num_parts) + ".json")


def scores_folder(out_dir: str, part_id: int, num_parts: int) -> str:
    return os.path.join(parts_folder(out_dir), part_name(part_id, num_parts))


def remove_parts(out_dir: str) -> None:
    """A run without ``-num_parts`` replaces every prediction, so parts of an earlier split are out of date."""
    shutil.rmtree(parts_folder(out_dir), ignore_errors=True)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_identities(model_folders: Sequence[str], folds: Sequence, checkpoint: str) -> Dict[str, str]:
    """Absolute path -> sha256 of every checkpoint the models load (each fold's ``checkpoint``)."""
    paths = [os.path.abspath(os.path.join(folder, f"fold_{fold}", checkpoint))
             for folder in model_folders for fold in folds]
    return {path: file_sha256(path) for path in dict.fromkeys(paths)}


def read_manifest(path: str) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError:  # written atomically, so only a file edited by hand gets here
        raise MissingModError(f"{path} is not a part manifest of evaluate (not JSON); remove it and its part's "
                              "predictions, then rerun the part") from None


def write_manifest(path: str, manifest: Mapping[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")


def settings_record(settings) -> Dict[str, Any]:
    """What decides an ``EvaluateSettings``' records (not the output folder, devices or worker counts), as JSON."""
    from nnunet_missingmod.evaluation.metrics import one_empty_hd95
    scoring = {k: v for k, v in asdict(settings.scoring).items() if k not in ("output", "num_processes")}
    return {"images": os.path.abspath(settings.images), "labels": os.path.abspath(settings.labels),
            "model_folders": [os.path.abspath(f) for f in settings.model_folders],
            "full_set_model": os.path.abspath(settings.full_set_model) if settings.full_set_model else None,
            "folds": [str(f) for f in settings.folds], "checkpoint": settings.checkpoint,
            "subsets": [s.name for s in settings.subsets], "step_size": settings.step_size,
            "use_mirroring": settings.use_mirroring, "figures": settings.figures, "scoring": scoring,
            "one_empty_hd95": one_empty_hd95(settings.scoring.hd95_variant)}


def check_split(out_dir: str, num_parts: int) -> None:
    """Parts of another ``-num_parts`` in ``out_dir`` split the cases differently: refused."""
    others = sorted({int(m.group(2)) for m in map(_MANIFEST_NAME.fullmatch, _listdir(parts_folder(out_dir)))
                     if m and int(m.group(2)) != num_parts})
    if others:
        raise MissingModError(f"{out_dir} holds the parts of an evaluate -num_parts {others[0]} split; use "
                              f"-num_parts {others[0]} or another output folder")


def check_same_run(previous: Mapping[str, Any], settings: Mapping[str, Any], checkpoints: Mapping[str, str],
                   path: str) -> None:
    """A rerun of a part must be the run its manifest describes: one error naming the first difference."""
    for checkpoint, sha in previous.get("checkpoints", {}).items():
        if checkpoints.get(checkpoint, sha) != sha:
            raise MissingModError(f"checkpoint {checkpoint} changed since this part started (sha256 {sha[:12]}... "
                                  f"in {path}, now {checkpoints[checkpoint][:12]}...): refusing to mix the "
                                  "predictions of two checkpoints; evaluate into another folder")
    changed = [key for key in sorted(set(settings) | set(previous.get("settings", {})))
               if previous.get("settings", {}).get(key) != settings.get(key)]
    if changed or set(checkpoints) != set(previous.get("checkpoints", {})):
        raise MissingModError(f"this part was started with other settings ({', '.join(changed) or 'checkpoints'} "
                              f"differ from {path}): rerun it with the same command, or evaluate into another "
                              "folder")


def start_part(out_dir: str, part_id: int, num_parts: int, settings: Mapping[str, Any],
               checkpoints: Mapping[str, str]) -> Optional[dict]:
    """Checks before any model loads; returns the part's earlier manifest (``None``: the part starts clean)."""
    check_split(out_dir, num_parts)
    path = manifest_path(out_dir, part_id, num_parts)
    previous = read_manifest(path)
    if previous is not None:
        check_same_run(previous, settings, checkpoints, path)
    return previous


def clear_part_files(out_dir: str, part_id: int, num_parts: int, prediction_files: Sequence[str]) -> None:
    """A part without a manifest: its cases' files of an earlier run (unknown checkpoint) are removed."""
    for path in prediction_files:
        if os.path.isfile(path):
            os.remove(path)
    shutil.rmtree(scores_folder(out_dir, part_id, num_parts), ignore_errors=True)


def score_part_cases(out_dir: str, part_id: int, num_parts: int, labels_dir: str, entries: Sequence,
                     cases: Sequence[str], regions: Mapping[str, Sequence[int]], scoring, file_ending: str) -> int:
    """Score every case of ``cases`` without a records file yet (all ``entries``, each a
    :class:`~nnunet_missingmod.evaluation.scoring.PredictionFolder`, against one reading of its ground truth, in
    ``scoring.num_processes`` processes) and write ``OUT/parts/partIofN/<case>.json`` atomically as each finishes.
    Records are in the order :func:`~nnunet_missingmod.evaluation.scoring.score_prediction_folders` makes them
    per case. Returns the number of cases scored."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from nnunet_missingmod.evaluation.scoring import (
        lesion_protocol_named, list_label_files, score_task, scoring_record, subset_name_and_cardinality)
    folder = scores_folder(out_dir, part_id, num_parts)
    os.makedirs(folder, exist_ok=True)
    gt = list_label_files(labels_dir, file_ending)
    protocol = lesion_protocol_named(scoring.lesion_protocol)
    regions = {name: tuple(int(v) for v in values) for name, values in regions.items()}
    jobs = []
    for case in cases:
        if os.path.isfile(os.path.join(folder, case + ".json")):
            continue
        predictions = [os.path.join(entry.folder, case + file_ending) for entry in entries]
        unique = list(dict.fromkeys(predictions))  # a routed entry's file is scored once
        jobs.append((case, predictions, (gt[case], unique, regions, scoring.hd95_variant, protocol)))

    def save(case: str, predictions: List[str], task: tuple, results) -> None:
        by_file = dict(zip(task[1], results))
        records = []
        for entry, prediction in zip(entries, predictions):
            key = subset_name_and_cardinality(entry.subset)
            records += [scoring_record(entry.trainer, case, key, region, score)
                        for region, score in by_file[prediction].items()]
        atomic_write_text(os.path.join(folder, case + ".json"), json.dumps(records) + "\n")

    workers = min(scoring.num_processes, len(jobs))
    if workers <= 1:
        for job in jobs:
            save(*job, score_task(job[2]))
        return len(jobs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent)  # no worker outlives a SIGKILLed evaluate
    try:
        futures = {pool.submit(score_task, job[2]): job for job in jobs}
        for future in as_completed(futures):
            save(*futures[future], future.result())
    except BaseException:  # an error or SIGTERM (Terminated): the cases not yet started are not scored
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return len(jobs)


# --------------------------------------------------------------------------------------------------------- merge

def _listdir(folder: str) -> List[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def read_parts(out_dir: str) -> Tuple[int, List[dict]]:
    """The manifests of every part of ``out_dir``, checked: all N present, finished and of one run."""
    found: Dict[int, Dict[int, str]] = {}
    for name in _listdir(parts_folder(out_dir)):
        match = _MANIFEST_NAME.fullmatch(name)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = os.path.join(parts_folder(out_dir), name)
    if not found:
        raise MissingModError(f"{out_dir} holds no part of an evaluate -num_parts run (no "
                              f"{os.path.join(parts_folder(out_dir), 'partIofN.json')})")
    if len(found) > 1:
        raise MissingModError(f"{out_dir} holds parts of several splits (-num_parts {', '.join(map(str, found))})")
    num_parts, paths = next(iter(found.items()))
    manifests = {i: read_manifest(path) for i, path in paths.items()}
    missing = [i for i in range(num_parts) if i not in manifests]
    unfinished = [i for i, m in sorted(manifests.items()) if not m.get("finished")]
    if missing or unfinished:
        problems = ([f"part(s) {', '.join(map(str, missing))} never started"] if missing else []) + \
            ([f"part(s) {', '.join(map(str, unfinished))} unfinished (stopped, failed or still running)"]
             if unfinished else [])
        raise MissingModError(f"cannot merge {out_dir}: of -num_parts {num_parts}, {' and '.join(problems)}; run "
                              f"evaluate ... -num_parts {num_parts} -part_id I for each of them (a rerun goes on "
                              "where it stopped), then merge again")
    first = manifests[0]
    for i in range(1, num_parts):
        for key in ("settings", "checkpoints", "all_cases", "entries"):
            if manifests[i].get(key) != first.get(key):
                raise MissingModError(f"cannot merge {out_dir}: part {i} was run with other {key} than part 0 "
                                      f"({paths[i]}, {paths[0]})")
    return num_parts, [manifests[i] for i in range(num_parts)]


def merge_records(out_dir: str, num_parts: int, manifests: Sequence[Mapping[str, Any]]) -> List[dict]:
    """Every part's records, in the order of a run without parts: entry, subset, case, then region."""
    order = {(trainer, subset): k for k, (trainer, subset, _) in enumerate(manifests[0]["entries"])}
    records = []
    for part_id, manifest in enumerate(manifests):
        folder = scores_folder(out_dir, part_id, num_parts)
        for case in manifest["cases"]:
            path = os.path.join(folder, case + ".json")
            if not os.path.isfile(path):
                raise MissingModError(f"cannot merge {out_dir}: part {part_id} of {num_parts} has no scores of case "
                                      f"{case} ({path}); rerun that part")
            with open(path, encoding="utf-8") as f:
                records += json.load(f)
    if sorted(r for m in manifests for r in m["cases"]) != sorted(manifests[0]["all_cases"]):
        raise MissingModError(f"cannot merge {out_dir}: the parts' cases are not the cases of the images folder")
    records.sort(key=lambda r: (order[(r["trainer"], r["subset"])], r["case"]))  # stable: regions keep their order
    return records


def run_merge(out_dir: str) -> int:
    from nnunet_missingmod.evaluation.figures import write_pictures
    from nnunet_missingmod.evaluation.metrics import BRATS_DIAGONAL_HD95, one_empty_hd95
    from nnunet_missingmod.evaluation.options import ScoringSettings, print_overview, scoring_conventions
    from nnunet_missingmod.evaluation.report import write_report
    from nnunet_missingmod.evaluation.scoring import PredictionFolder
    if not os.path.isdir(out_dir):
        raise MissingModError(f"not a folder: {out_dir}")
    claim_folder(out_dir, "evaluate-merge")  # refused while a part still writes into it
    num_parts, manifests = read_parts(out_dir)
    settings = manifests[0]["settings"]
    expected = one_empty_hd95(settings["scoring"]["hd95_variant"])
    if settings.get("one_empty_hd95") != expected:  # older parts scored every variant's one-empty pair 373.13
        raise MissingModError(f"cannot merge {out_dir}: its parts scored the HD95 of a pair with one empty mask as "
                              f"{settings.get('one_empty_hd95', BRATS_DIAGONAL_HD95):g} mm, this version as "
                              f"{expected:g} mm; evaluate the parts again into another folder")
    records = merge_records(out_dir, num_parts, manifests)
    scoring = ScoringSettings(output=out_dir, **settings["scoring"])
    summary = write_report(records, out_dir, scoring_conventions(scoring), bootstrap=scoring.bootstrap)
    print_overview(summary, out_dir)
    entries = [PredictionFolder(trainer, subset, os.path.join(out_dir, folder))
               for trainer, subset, folder in manifests[0]["entries"]]
    for folder in dict.fromkeys(entry.folder for entry in entries):  # the whole folder is ours: no part runs
        remove_stale_temporaries(folder)  # of a part killed while it wrote
    case_files = {case: files for m in manifests for case, files in m["case_files"].items()}
    regions = {name: tuple(values) for name, values in manifests[0]["regions"].items()}
    write_pictures(out_dir, settings["figures"], records, case_files, settings["labels"], entries, regions,
                   manifests[0]["file_ending"])
    print(f"merged {num_parts} part(s) of {out_dir}")
    return 0


def _evaluate_merge(args: argparse.Namespace) -> int:
    return run_merge(args.out)


def register_evaluate_merge(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate-merge", help="write the report of an evaluate run split with -num_parts, once every part is done",
        description="Read the parts that 'evaluate -num_parts N -part_id I' wrote into OUT (OUT/parts/) and write "
                    "metrics.csv, summary.json, summary.md, the plots and the case pictures, the same as one "
                    "evaluate call without -num_parts writes. A part that is missing or unfinished is named in one "
                    "error (exit status 2): rerun it, then merge again.")
    p.add_argument("out", metavar="OUT", help="the -o folder every part wrote into")
    p.set_defaults(func=_evaluate_merge)
