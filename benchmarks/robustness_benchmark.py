"""A robustness benchmark that can rank trainers: every trainer x budget x seed trained with ``nnUNetv2_train`` on
phantoms, evaluated with ``nnunet-missingmod evaluate`` under all 15 subsets on a held-out set of 30 or more cases,
and paired per case with bootstrap intervals.

    python benchmarks/robustness_benchmark.py --out runs/robustness                 # the full CPU run
    python benchmarks/robustness_benchmark.py --preset gpu --out $OUT/robustness    # one GPU call (~8 min)

Stages, each skipped when its output exists (a rerun resumes; an interrupted training goes on from nnU-Net's
``checkpoint_latest.pth`` with ``--c``):

1. data: phantom cases of ``nnunet_missingmod.conversion.phantom`` in the BraTS 2021 layout, converted by our
   converter; training cases (generator seed 0) planned and preprocessed by ``nnUNetv2_plan_and_preprocess``; the
   held-out cases (generator seed 1000, ids from 1000) with every fifth-or-so case forced to have no enhancing
   tumour (``--dataset-id`` trains on an existing preprocessed dataset instead and generates only the held-out set);
2. training: ``nnUNetv2_train ID 3d_fullres all -tr <trainer><budget suffix> --c`` per seed, each seed in its own
   ``nnUNet_results`` (``OUT/results/seed_K``);
3. evaluation: ``nnunet-missingmod evaluate`` of every model on the held-out set (no TTA), in ``-num_parts`` parts
   merged by ``evaluate-merge`` when ``--eval-parts`` > 1;
4. report: ``report.md``, ``report_arms.csv``, ``report_pairs.csv``, ``report.json``, ``report.png`` (atomic).

``--report-only`` writes the report from the evaluations finished so far, while a long run goes on in another
process: each budget with the seeds evaluated for every trainer (a budget with none is left out and named), without
training, evaluating or taking ``OUT``'s lock; ``--report-to DIR`` writes those files into ``DIR`` instead (the report
of some of the trainers beside the report of all).

The report rests on ``OUT/benchmark.json``, ``OUT/heldout_cases.json`` and each evaluation's ``metrics.csv`` and
``summary.json`` (``OUT/evaluation/seed_K/TRAINER/``, well under 1 MB per model), and a model whose evaluation is
finished is not trained again: the models and the data (gigabytes) may be deleted, and those files alone, kept or
copied into a new ``OUT``, are what ``--report-only`` reports from and what a run elsewhere goes on from (it generates
the same data again: the generator is seeded).

Seeds: nnU-Net seeds neither the network's initialisation nor data loading nor augmentation, and our trainers'
subset sampler draws a fresh seed per process (``SamplingSettings.seed`` is ``None``), so there is no per-run seed
to set; seed K is the K-th independent training run, as the demo's repeated runs are.

A trainer named twice (``--trainers A B A``) is trained and evaluated once and reported twice (``A``, ``A#2``): a
pair of identical models, whose paired differences must be exactly 0 (a check of the pairing).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from machine import load_average
from nnunet_missingmod.demo.pipeline import CPU_ALLOCATOR_ENV, console_script
from nnunet_missingmod.errors import MissingModError

TRAIN_SEED, TEST_SEED, TEST_INDEX_OFFSET = 0, 1000, 1000  # as the demo: test ids never collide with training ids
SOURCE_FORMAT = "brats2021"
CONFIGURATION, PLANS = "3d_fullres", "nnUNetPlans"
DEFAULT_FOLD = "all"  # train on every training case: the held-out set is the evaluation
TRAIN_DATASET_ID, TRAIN_DATASET_NAME = 510, "RobustnessTrain"
HELDOUT_DATASET_ID, HELDOUT_DATASET_NAME = 511, "RobustnessHeldOut"  # in its own raw root, OUT/heldout_raw
STOCK, BAR = "FullSetTrainer", "ModalityDropoutTrainer_cardinality"
NO_ET_FRACTION = 0.2  # at least this share of the held-out cases has no enhancing tumour
REGIONS = ("WT", "TC", "ET")
VIEWS = ("full_set", "mean_over_subsets", "worst_subset")
VIEW_LABELS = {"full_set": "complete", "mean_over_subsets": "15-subset mean", "worst_subset": "worst subset"}
METRIC_LABELS = {"dice": "Dice", "lesion_dice": "lesion-wise Dice"}
MARKER = "benchmark.json"


@dataclass(frozen=True)
class Preset:
    spacing_mm: float
    train_cases: int
    test_cases: int
    budgets: Tuple[str, ...]
    seeds: int
    device: str
    jobs: int
    eval_parts: int


def _self_distillation() -> str:
    from nnunet_missingmod.training.methods.selfdistill.trainer import SELF_DISTILLATION_TRAINER
    return SELF_DISTILLATION_TRAINER


# 3 mm in both: phantom.py draws the enhancing rim max(U(2, 5) mm, one voxel) thick and the core radius
# U(max(10, 3 voxels), max(25, 4.5 voxels)) mm, so at 3 mm every radius and two thirds of the rims keep their drawn
# size (rims 1-1.7 voxels; at 8 mm every rim is one voxel and cores are forced to 24-36 mm); nnU-Net plans a
# 56x64x48 patch that holds the whole brain (2 mm: 80x96x80, 3.6x the voxels per step).
# gpu: three trainers at 3000 iterations, one seed, within one 8-minute call.
PRESETS: Dict[str, Preset] = {
    "cpu": Preset(3.0, 30, 30, ("small", "medium", "large"), 3, "cpu", 1, 1),
    "gpu": Preset(3.0, 30, 30, ("large",), 1, "cuda", 3, 1),
}


@dataclass(frozen=True)
class DataSettings:
    """What the data stage produced; kept in ``OUT/benchmark.json`` so that a rerun cannot mix two data sets."""

    spacing_mm: float
    train_cases: int
    test_cases: int
    dataset_id: Optional[int]  # an existing preprocessed dataset, or None: generated here
    fold: str  # the models' fold: evaluations of another fold must not be reused


# ------------------------------------------------------------------------------------------------------ running
class Runner:
    """Runs commands with their output in ``OUT/logs/NAME.log``, at most ``jobs`` at once."""

    def __init__(self, out: Path, jobs: int):
        self.logs = out / "logs"
        self.jobs = max(1, jobs)

    def run_all(self, commands: Sequence[Tuple[str, List[str], Dict[str, str]]]) -> None:
        """Run (name, command, env) items, ``jobs`` at a time; the first failure stops the others and raises."""
        self.logs.mkdir(parents=True, exist_ok=True)
        pending, running = list(commands), []
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    name, command, env = pending.pop(0)
                    log = open(self.logs / f"{name}.log", "a", encoding="utf-8")
                    log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
                    log.flush()
                    print(f"  start {name}", flush=True)
                    started = time.monotonic()
                    # ends with this process, also after a SIGKILL of it: no orphan keeps training into OUT
                    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                               preexec_fn=_end_with_parent)
                    running.append((name, process, log, started))
                time.sleep(0.2)
                for item in list(running):
                    name, process, log, started = item
                    if process.poll() is None:
                        continue
                    running.remove(item)
                    log.close()
                    if process.returncode != 0:
                        tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                        raise MissingModError(f"{name} failed (exit code {process.returncode}); last lines of "
                                              f"{self.logs / (name + '.log')}:\n" + "\n".join(tail))
                    print(f"  done  {name} in {time.monotonic() - started:.0f} s", flush=True)
        finally:
            for _name, process, log, _ in running:
                process.terminate()
                process.wait()
                log.close()


def _end_with_parent() -> None:
    from nnunet_missingmod.faults import die_with_parent
    die_with_parent(signal.SIGTERM, parent_pid=os.getppid())


def our_command(*args) -> List[str]:
    return [sys.executable, "-m", "nnunet_missingmod.cli", *map(str, args)]


# --------------------------------------------------------------------------------------------------------- data
def heldout_kinds(n: int) -> List[str]:
    """Tumour kind per held-out case: ceil(n/5) cases without enhancing tumour spread over the set, the others
    classic or without necrosis 3:1 (the generator's own ratio between its kinds that have enhancing tumour)."""
    n_no_et = math.ceil(NO_ET_FRACTION * n)
    no_et = {round((j + 0.5) * n / n_no_et - 0.5) for j in range(n_no_et)}
    kinds, k = [], 0
    for i in range(n):
        if i in no_et:
            kinds.append("no_enhancing")
        else:
            kinds.append("no_necrosis" if k % 4 == 3 else "classic")
            k += 1
    return kinds


class Benchmark:
    def __init__(self, args: argparse.Namespace):
        from nnunet_missingmod.training.naming import trainer_dir
        self.args = args
        self.out = Path(args.out).resolve()
        self.runner = Runner(self.out, args.jobs)
        self.heldout_raw = self.out / "heldout_raw"
        if args.dataset_id is None:
            self.raw, self.preprocessed = self.out / "nnUNet_raw", self.out / "nnUNet_preprocessed"
        else:
            for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
                if not os.environ.get(variable):
                    raise MissingModError(f"--dataset-id {args.dataset_id}: environment variable {variable} is not "
                                          f"set (where the existing dataset lives)")
            self.raw = Path(os.environ["nnUNet_raw"])
            self.preprocessed = Path(os.environ["nnUNet_preprocessed"])
        env = dict(os.environ, nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_extTrainer=trainer_dir(), PYTHONUNBUFFERED="1")
        if args.device == "cpu":
            # augmentation in the main process and no compilation: workers and compiling only compete on a CPU
            env.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="f", **CPU_ALLOCATOR_ENV)
        else:
            env.setdefault("nnUNet_n_proc_DA", str(max(1, (os.cpu_count() or 4) // max(1, args.jobs))))
        self.env = env

    # names and paths -------------------------------------------------------------------------------------------
    @property
    def dataset_id(self) -> int:
        return TRAIN_DATASET_ID if self.args.dataset_id is None else self.args.dataset_id

    def dataset_name(self) -> str:
        if self.args.dataset_id is None:
            return f"Dataset{TRAIN_DATASET_ID:03d}_{TRAIN_DATASET_NAME}"
        # the folder in $nnUNet_preprocessed (training needs it there), as nnU-Net's own lookup finds it
        found = sorted(p.name for p in self.preprocessed.glob(f"Dataset{self.dataset_id:03d}_*") if p.is_dir())
        if len(found) != 1:
            listed = ", ".join(found) or "none"
            raise MissingModError(f"--dataset-id {self.dataset_id}: {len(found)} folders "
                                  f"Dataset{self.dataset_id:03d}_* in {self.preprocessed} ({listed}); plan and "
                                  f"preprocess it first (nnUNetv2_plan_and_preprocess -d {self.dataset_id} -c "
                                  f"{CONFIGURATION})")
        return found[0]

    def trainers(self) -> List[str]:
        """Distinct trainers, in the order given."""
        return list(dict.fromkeys(self.args.trainers))

    def arms(self) -> List[Tuple[str, str]]:
        """(label, trainer) per trainer given; a repeated trainer gets ``#2``, ``#3`` (the same models)."""
        seen: Dict[str, int] = {}
        arms = []
        for trainer in self.args.trainers:
            seen[trainer] = seen.get(trainer, 0) + 1
            arms.append((trainer if seen[trainer] == 1 else f"{trainer}#{seen[trainer]}", trainer))
        return arms

    def trainer_class(self, trainer: str, budget: str) -> str:
        from nnunet_missingmod.training.naming import BUDGETS
        return trainer + BUDGETS[budget].suffix

    def model_dir(self, trainer: str, budget: str, seed: int) -> Path:
        return (self.out / "results" / f"seed_{seed}" / self.dataset_name()
                / f"{self.trainer_class(trainer, budget)}__{PLANS}__{CONFIGURATION}")

    def heldout_dir(self) -> Path:
        return self.heldout_raw / f"Dataset{HELDOUT_DATASET_ID:03d}_{HELDOUT_DATASET_NAME}"

    def evaluation_dir(self, trainer: str, budget: str, seed: int) -> Path:
        return self.out / "evaluation" / f"seed_{seed}" / self.trainer_class(trainer, budget)

    def evaluated(self, trainer: str, budget: str, seed: int) -> bool:
        out = self.evaluation_dir(trainer, budget, seed)
        return (out / "metrics.csv").is_file() and (out / "summary.json").is_file()

    def reported_seeds(self, budget: str) -> List[int]:
        """The seeds of ``budget`` evaluated for every trainer: all of them after the evaluation stage (a missing
        one is an error); with ``--report-only``, those finished so far."""
        seeds = [s for s in range(self.args.seeds) if all(self.evaluated(t, budget, s) for t in self.trainers())]
        if not self.args.report_only and len(seeds) < self.args.seeds:
            missing = next(self.evaluation_dir(t, budget, s) for s in range(self.args.seeds) for t in self.trainers()
                           if not self.evaluated(t, budget, s))
            raise MissingModError(f"{missing}: no finished evaluation (metrics.csv and summary.json)")
        return seeds

    # stages ----------------------------------------------------------------------------------------------------
    def check_marker(self, data: DataSettings) -> bool:
        """Whether ``OUT`` already holds this benchmark's marker with ``data``; another one, or a non-empty folder
        without it, is refused (before anything is written)."""
        from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME
        marker = self.out / MARKER
        if not marker.is_file():
            if self.out.is_dir() and any(p.name != FOLDER_LOCK_NAME for p in self.out.iterdir()):
                raise MissingModError(f"--out {self.out}: the folder is not empty and holds no {MARKER}; choose a "
                                      f"new or empty folder")
            return False
        stored = self.stored_data()
        if stored != data:
            raise MissingModError(f"--out {self.out} holds a benchmark with data {asdict(stored)}, not "
                                  f"{asdict(data)}; use those settings or another --out")
        return True

    def stored_data(self) -> DataSettings:
        """The data settings of the benchmark in ``OUT`` (``--report-only`` reports what is there, whatever the data
        flags say)."""
        marker = self.out / MARKER
        if not marker.is_file():
            raise MissingModError(f"--out {self.out}: no {MARKER}, so no benchmark to report on")
        try:
            return DataSettings(**json.loads(marker.read_text()))
        except (ValueError, TypeError) as e:
            raise MissingModError(f"--out {self.out}: {marker} is not this benchmark's marker ({e})") from None

    def claim(self, data: DataSettings) -> None:
        """Hold ``OUT``'s lock while running (a second benchmark into it refuses) and write the marker."""
        from nnunet_missingmod.atomic_io import atomic_write_text, claim_folder
        self.out.mkdir(parents=True, exist_ok=True)
        claim_folder(str(self.out), "robustness benchmark")
        if not self.check_marker(data):
            atomic_write_text(str(self.out / MARKER), json.dumps(asdict(data)) + "\n")

    def data(self, data: DataSettings) -> None:
        from nnunet_missingmod.atomic_io import atomic_write_text
        if not (self.heldout_dir() / "dataset.json").is_file():
            kinds = heldout_kinds(data.test_cases)
            cases = self._phantoms("test", data.test_cases, TEST_SEED, TEST_INDEX_OFFSET, data.spacing_mm, kinds)
            rows = [{"case": case_id, "kind": case.kind, "WT_voxels": int(case.label.astype(bool).sum()),
                     "ET_voxels": int(case.tissues["ET"].sum())} for case_id, case in cases.items()]
            atomic_write_text(str(self.out / "heldout_cases.json"), json.dumps(rows, indent=1) + "\n")
            self._convert("test", HELDOUT_DATASET_ID, HELDOUT_DATASET_NAME, self.heldout_raw)
        if self.args.dataset_id is not None:
            return
        if not (self.raw / f"Dataset{TRAIN_DATASET_ID:03d}_{TRAIN_DATASET_NAME}" / "dataset.json").is_file():
            self._phantoms("train", data.train_cases, TRAIN_SEED, 0, data.spacing_mm, None)
            self._convert("train", TRAIN_DATASET_ID, TRAIN_DATASET_NAME, self.raw)
        folder = self.preprocessed / self.dataset_name() / f"{PLANS}_{CONFIGURATION}"
        if (folder.parent / f"{PLANS}.json").is_file() and len(list(folder.glob("*.pkl"))) >= data.train_cases:
            return
        workers = "1" if self.args.device == "cpu" else str(min(12, os.cpu_count() or 1))
        self.runner.run_all([("plan_and_preprocess",
                              [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_DATASET_ID), "-c",
                               CONFIGURATION, "-npfp", workers, "-np", workers, "--verify_dataset_integrity"],
                              dict(self.env, nnUNet_n_proc_DA="1"))])  # nnUNet_n_proc_DA=0 crashes planning (2.8.1)

    def _phantoms(self, part: str, n: int, seed: int, first_index: int, spacing: float,
                  kinds: Optional[List[str]]):
        from nnunet_missingmod.conversion.phantom import write_phantom_dataset
        final = self.out / "sources" / part
        partial = self.out / "sources" / f"{part}.partial"  # renamed when complete: a folder present is finished
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # only reached when its conversion is missing: write it again
        print(f"phantoms: {n} {part} cases at {spacing:g} mm", flush=True)
        cases = write_phantom_dataset(partial, n, SOURCE_FORMAT, spacing=spacing, seed=seed, first_index=first_index,
                                      progress=False, kinds=kinds)
        partial.rename(final)
        return cases

    def _convert(self, part: str, dataset_id: int, name: str, raw: Path) -> None:
        raw.mkdir(parents=True, exist_ok=True)
        self.runner.run_all([(f"convert_{part}", our_command("convert", SOURCE_FORMAT, self.out / "sources" / part,
                                                             dataset_id, "--name", name),
                              dict(self.env, nnUNet_raw=str(raw)))])

    def spacing_of_existing_dataset(self) -> float:
        plans = self.preprocessed / self.dataset_name() / f"{PLANS}.json"
        if not plans.is_file():
            raise MissingModError(f"--dataset-id {self.dataset_id}: {plans} does not exist; run "
                                  f"nnUNetv2_plan_and_preprocess -d {self.dataset_id} -c {CONFIGURATION} first")
        spacing = json.loads(plans.read_text())["original_median_spacing_after_transp"]
        if max(spacing) - min(spacing) > 1e-3:
            raise MissingModError(f"--dataset-id {self.dataset_id}: spacing {spacing} is not isotropic; the held-out "
                                  f"phantoms are")
        return float(spacing[0])

    def train(self) -> None:
        commands = []
        for seed in range(self.args.seeds):
            for budget in self.args.budgets:
                for trainer in self.trainers():
                    folder = self.model_dir(trainer, budget, seed)
                    # the report rests on the evaluation alone: a model deleted after it is not trained again
                    if ((folder / f"fold_{self.args.fold}" / "checkpoint_final.pth").is_file()
                            or self.evaluated(trainer, budget, seed)):
                        continue
                    name = f"train_{self.trainer_class(trainer, budget)}_seed{seed}"
                    command = [console_script("nnUNetv2_train"), str(self.dataset_id), CONFIGURATION, self.args.fold,
                               "-tr", self.trainer_class(trainer, budget), "-p", PLANS, "-device", self.args.device,
                               "--c"]
                    results = self.out / "results" / f"seed_{seed}"
                    commands.append((name, command, dict(self.env, nnUNet_results=str(results))))
        print(f"training: {len(commands)} run(s) to do", flush=True)
        self.runner.run_all(commands)

    def evaluate(self) -> None:
        images = self.heldout_dir()
        parts = self.args.eval_parts
        pipeline = ("-npp", "0", "-nps", "0") if self.args.device == "cpu" else ()
        commands, merges = [], []
        for seed in range(self.args.seeds):
            for budget in self.args.budgets:
                for trainer in self.trainers():
                    out = self.evaluation_dir(trainer, budget, seed)
                    if self.evaluated(trainer, budget, seed):
                        continue
                    base = our_command("evaluate", "-i", images / "imagesTr", "-l", images / "labelsTr", "-m",
                                       self.model_dir(trainer, budget, seed), "-f", self.args.fold, "-device",
                                       self.args.device, "--disable_tta", "--figures", "0", "--bootstrap", "0",
                                       "-np", "1" if self.args.device == "cpu" else "4", "-o", out, *pipeline)
                    name = f"evaluate_{self.trainer_class(trainer, budget)}_seed{seed}"
                    if parts == 1:
                        commands.append((name, base, self.env))
                        continue
                    for part in range(parts):
                        commands.append((f"{name}_part{part}",
                                         base + ["-num_parts", str(parts), "-part_id", str(part)], self.env))
                    merges.append((f"{name}_merge", our_command("evaluate-merge", out), self.env))
        print(f"evaluation: {len(commands)} call(s) to do", flush=True)
        self.runner.run_all(commands)
        self.runner.run_all(merges)


# ------------------------------------------------------------------------------------------------------ report
def per_case_view(table, trainer_class: str, region: str, metric: str, view: str) -> Dict[str, float]:
    """case -> the value of ``view`` in one evaluation: evaluate's paired-interval views (complete scans, the case's
    mean over the 15 subsets, its worst subset), computed by the same RecordTable methods."""
    from nnunet_missingmod.modalities import FULL_SET, SUBSET_NAMES
    subsets = table.subsets_of(trainer_class, region)
    if sorted(subsets) != sorted(SUBSET_NAMES):
        raise MissingModError(f"{trainer_class}: its evaluation has {len(subsets)} of the 15 subsets for {region}")
    if view == "full_set":
        return table.values(trainer_class, region, FULL_SET.name, metric)
    if view == "mean_over_subsets":
        return table.per_case_mean(trainer_class, region, metric, subsets)
    return table.per_case_min(trainer_class, region, metric, subsets)


def seed_averaged(tables, trainer_class: str, region: str, metric: str, view: str) -> Dict[str, float]:
    """case -> the view's value averaged over the seeds' evaluations (every seed must have every case)."""
    per_seed = [per_case_view(t, trainer_class, region, metric, view) for t in tables]
    cases = sorted(per_seed[0])
    if any(sorted(values) != cases for values in per_seed[1:]):
        raise MissingModError(f"{trainer_class}: the seeds' evaluations hold different cases")
    return {case: float(np.mean([values[case] for values in per_seed])) for case in cases}


def pair_entry(model: Dict[str, float], reference: Dict[str, float], n_resamples: int, names: Tuple[str, str],
               view: str) -> dict:
    """Per-case differences model − reference, evaluate's bootstrap interval of their mean and Wilcoxon p; a
    ranking only where the interval excludes 0 (evaluate's rule)."""
    from nnunet_missingmod.evaluation.report import BOOTSTRAP_SEED, bootstrap_interval, wilcoxon_p
    if sorted(model) != sorted(reference):
        raise MissingModError(f"{names[0]} and {names[1]} were evaluated on different cases")
    cases = sorted(model)
    differences = np.array([model[c] - reference[c] for c in cases])
    low = high = ranking = None
    if len(cases) >= 2 and n_resamples > 0:
        low, high = bootstrap_interval(differences, n_resamples, BOOTSTRAP_SEED)
        if low > 0:
            ranking = f"{names[0]} > {names[1]}"
        elif high < 0:
            ranking = f"{names[1]} > {names[0]}"
    p_value, _ = wilcoxon_p(list(differences), on=f"per-case {VIEW_LABELS[view]}")
    return {"n_cases": len(cases), "mean_model": float(np.mean(list(model.values()))),
            "mean_reference": float(np.mean(list(reference.values()))),
            "mean_difference": float(np.mean(differences)), "ci_low": low, "ci_high": high, "ranking": ranking,
            "wilcoxon_p": p_value, "per_case_difference": {c: float(d) for c, d in zip(cases, differences)}}


def build_report(bench: Benchmark, n_resamples: int) -> dict:
    """``budgets``: the budgets reported, each with its seeds (:meth:`Benchmark.reported_seeds`); ``left_out``: the
    budgets without one; ``arms``: per budget, trainer, region, metric and view the mean and SD over seeds of the mean
    over cases; ``pairs``: every pair of trainers per budget, region, metric and view, paired per case after
    averaging each trainer's per-case values over its seeds."""
    from nnunet_missingmod.evaluation.report import RecordTable, read_metrics_csv
    from nnunet_missingmod.training.naming import BUDGETS
    arms_rows, pairs, budgets, left_out = [], [], [], []
    labels = [label for label, _ in bench.arms()]
    for budget in bench.args.budgets:
        seeds = bench.reported_seeds(budget)
        if not seeds:
            left_out.append(budget)
            continue
        iterations = BUDGETS[budget].iterations
        budgets.append({"budget": budget, "iterations": iterations, "seeds": seeds})
        tables = {}
        for trainer in bench.trainers():
            records = [read_metrics_csv(str(bench.evaluation_dir(trainer, budget, s) / "metrics.csv"))
                       for s in seeds]
            tables[trainer] = [RecordTable(rs) for rs in records]
        lesionwise = all(t.has_lesionwise for runs in tables.values() for t in runs)
        for region in REGIONS:
            for metric in ("dice", "lesion_dice") if lesionwise else ("dice",):
                for view in VIEWS:
                    averaged = {}
                    for label, trainer in bench.arms():
                        name = bench.trainer_class(trainer, budget)
                        values = [float(np.mean(list(per_case_view(t, name, region, metric, view).values())))
                                  for t in tables[trainer]]
                        arms_rows.append({
                            "budget": budget, "iterations": iterations, "trainer": label, "region": region,
                            "metric": metric, "view": view, "mean": float(np.mean(values)),
                            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                            "n_seeds": len(values), "per_seed": values})
                        averaged[label] = seed_averaged(tables[trainer], name, region, metric, view)
                    for i, reference in enumerate(labels):
                        for model in labels[i + 1:]:
                            pairs.append({"budget": budget, "iterations": iterations, "model": model,
                                          "reference": reference, "region": region, "metric": metric,
                                          "view": view, **pair_entry(averaged[model], averaged[reference],
                                                                     n_resamples, (model, reference), view)})
    if not budgets:
        raise MissingModError(f"--out {bench.out}: no budget has a seed evaluated for every trainer yet")
    return {"budgets": budgets, "left_out": left_out, "arms": arms_rows, "pairs": pairs, "n_resamples": n_resamples}


def seed_coverage(report: dict, n_seeds: int) -> List[str]:
    """Per budget asked for, the seeds the report rests on, or that it has none yet."""
    from nnunet_missingmod.training.naming import BUDGETS
    return ([f"{b['iterations']} iterations: seed(s) {', '.join(map(str, b['seeds']))} of {n_seeds}"
             for b in report["budgets"]]
            + [f"{BUDGETS[b].iterations} iterations: none yet (left out: no seed evaluated for every trainer)"
               for b in report["left_out"]])


def _cell(row: dict) -> str:
    return f"{row['mean']:.3f}" if row["sd"] is None else f"{row['mean']:.3f} ± {row['sd']:.3f}"


def report_markdown(bench: Benchmark, report: dict, data: DataSettings, cases: List[dict]) -> str:
    args = bench.args
    n_no_et = sum(1 for c in cases if c["ET_voxels"] == 0)
    wt = sorted(c["WT_voxels"] for c in cases)
    voxel_ml = data.spacing_mm ** 3 / 1000
    lines = [
        "# Robustness benchmark on phantoms", "",
        f"- data: {data.spacing_mm:g} mm phantoms; "
        + (f"{data.train_cases} training cases (generator seed {TRAIN_SEED})" if data.dataset_id is None
           else f"training dataset {data.dataset_id} (existing)")
        + f"; {len(cases)} held-out cases (seed {TEST_SEED}), {n_no_et} without enhancing tumour; whole tumour "
          f"{wt[0] * voxel_ml:.1f}–{wt[-1] * voxel_ml:.1f} ml (median {wt[len(wt) // 2] * voxel_ml:.1f} ml)",
        f"- a region absent from a case's reference scores 1 where the prediction has none either (BraTS): "
        f"{n_no_et} of {len(cases)} cases have no ET, so a model that never predicts ET scores "
        f"{n_no_et / max(1, len(cases)):.3f} on ET",
        f"- training: nnUNetv2_train {CONFIGURATION}, fold {args.fold}, {args.seeds} seed(s) (independent runs), "
        f"budgets {', '.join(args.budgets)}, device {args.device}",
        *(["- **report of the evaluations finished so far**: " + "; ".join(seed_coverage(report, args.seeds))]
          if args.report_only else []),
        "- evaluation: nnunet-missingmod evaluate, all 15 subsets, no TTA; whole-volume Dice and lesion-wise Dice "
        "(BraTS 2023 gli protocol)",
        "- per trainer and budget: mean ± SD over seeds of the mean over held-out cases of: complete-scan Dice; "
        "each case's mean over the 15 subsets; each case's worst subset (its lowest value over the 15)",
        f"- pairs: per case, each model's value averaged over its seeds, then the difference (model − reference) "
        f"and a 95 % percentile bootstrap interval of its mean over cases ({report['n_resamples']} resamples, "
        "evaluate's bootstrap_interval); **a ranking only where the interval excludes 0**",
        f"- written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {load_average()}", ""]
    if len(cases) < 10:
        lines[-1:-1] = [f"- **only {len(cases)} held-out cases**: too few for a percentile bootstrap interval to be "
                        "trusted; this run checks the pipeline, not the trainers"]
    arms = report["arms"]
    metrics = list(dict.fromkeys(r["metric"] for r in arms))
    for reported in report["budgets"]:
        budget, iterations, n_seeds = reported["budget"], reported["iterations"], len(reported["seeds"])
        for metric in metrics:
            lines += [f"## {iterations} iterations: {METRIC_LABELS[metric]} (mean ± SD over {n_seeds} seed(s))", "",
                      "| trainer | " + " | ".join(f"{region} {VIEW_LABELS[v]}" for region in REGIONS
                                                   for v in VIEWS) + " |",
                      "|---|" + "---|" * (len(REGIONS) * len(VIEWS))]
            for label, _ in bench.arms():
                cells = [_cell(next(r for r in arms if r["budget"] == budget and r["trainer"] == label
                                    and r["region"] == region and r["metric"] == metric and r["view"] == v))
                         for region in REGIONS for v in VIEWS]
                lines.append(f"| `{label}` | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Paired differences (model − reference; per case after averaging the seeds)", ""]
    if not report["pairs"]:
        lines += ["None: one trainer."]
    else:
        lines += ["| iterations | model | reference | region | metric | view | difference | 95 % interval | ranking |",
                  "|---|---|---|---|---|---|---|---|---|"]
    for p in report["pairs"]:
        interval = "—" if p["ci_low"] is None else f"[{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"
        lines.append(f"| {p['iterations']} | `{p['model']}` | `{p['reference']}` | {p['region']} | "
                     f"{METRIC_LABELS[p['metric']]} | {VIEW_LABELS[p['view']]} | {p['mean_difference']:+.3f} | "
                     f"{interval} | {p['ranking'] or 'no ranking'} |")
    lines += ["", "`report.png`: complete-scan gap to stock and 15-subset gap to `_cardinality` (whole-volume Dice) "
              "per region against iterations, with the 95 % intervals.", ""]
    return "\n".join(lines)


def _csv(rows: List[dict], fields: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in fields})
    return buffer.getvalue()


def plot_gaps(labels: List[str], report: dict, path: Path) -> None:
    """Two rows (complete-scan gap to stock, 15-subset gap to the bar) x regions; a line per other trainer of
    ``labels`` (the report's trainer labels), from ``report``'s ``budgets`` and ``pairs``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nnunet_missingmod.atomic_io import atomic_output
    from matplotlib.ticker import NullFormatter
    iterations = sorted(b["iterations"] for b in report["budgets"])
    n_seeds = {b["iterations"]: len(b["seeds"]) for b in report["budgets"]}
    rows = [("full_set", STOCK if STOCK in labels else labels[0], "complete-scan Dice gap to"),
            ("mean_over_subsets", BAR if BAR in labels else labels[0], "15-subset mean Dice gap to")]
    fig, axes = plt.subplots(len(rows), len(REGIONS), figsize=(4 * len(REGIONS), 3.4 * len(rows)), squeeze=False)
    for (view, reference, title), ax_row in zip(rows, axes):
        for region, ax in zip(REGIONS, ax_row):
            for line, label in enumerate(labels):
                if label == reference:
                    continue
                points = []
                for p in report["pairs"]:
                    if p["region"] != region or p["metric"] != "dice" or p["view"] != view:
                        continue
                    if (p["model"], p["reference"]) == (label, reference):
                        sign = 1.0
                    elif (p["model"], p["reference"]) == (reference, label):
                        sign = -1.0
                    else:
                        continue
                    low, high = (p["ci_low"], p["ci_high"]) if p["ci_low"] is not None else (None, None)
                    d = sign * p["mean_difference"]
                    lo, hi = (d, d) if low is None else sorted((sign * low, sign * high))
                    shift = 1.04 ** line  # identical gaps of two trainers stay visible side by side
                    points.append((p["iterations"] * shift, d, d - lo, hi - d))
                if not points:
                    continue
                points.sort()
                x, y, below, above = zip(*points)
                ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=3, label=label)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xscale("log")
            # the budgets' own iteration counts as the only ticks (log scale's own ticks garble a narrow range)
            ax.set_xticks(iterations, [f"{i}\n{n_seeds[i]} seed{'s' if n_seeds[i] > 1 else ''}" for i in iterations])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(iterations[0] / 1.6, iterations[-1] * 1.6)
            ax.set_title(f"{region}: {title} {reference}", fontsize=7)
            ax.set_xlabel("training iterations")
            if ax.get_legend_handles_labels()[0]:  # one trainer alone has no gap to draw
                ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_output(str(path)) as temporary:
        fig.savefig(temporary, format="png", dpi=110)
    plt.close(fig)


def write_report(bench: Benchmark, data: DataSettings) -> None:
    from nnunet_missingmod.atomic_io import atomic_write_text, check_writable_folder
    out = bench.out if bench.args.report_to is None else Path(bench.args.report_to)
    if bench.args.report_to is not None:
        check_writable_folder(str(out), "--report-to")
    report = build_report(bench, bench.args.bootstrap)
    cases_file = bench.out / "heldout_cases.json"
    cases = json.loads(cases_file.read_text())
    atomic_write_text(str(out / "report.json"), json.dumps({"data": asdict(data), "heldout_cases": cases,
                                                            **report}, indent=1) + "\n")
    atomic_write_text(str(out / "report_arms.csv"), _csv(
        report["arms"], ("budget", "iterations", "trainer", "region", "metric", "view", "mean", "sd", "n_seeds")))
    atomic_write_text(str(out / "report_pairs.csv"), _csv(
        report["pairs"], ("budget", "iterations", "model", "reference", "region", "metric", "view", "n_cases",
                          "mean_model", "mean_reference", "mean_difference", "ci_low", "ci_high", "ranking",
                          "wilcoxon_p")))
    atomic_write_text(str(out / "report.md"), report_markdown(bench, report, data, cases))
    plot_gaps([label for label, _ in bench.arms()], report, out / "report.png")
    for line in seed_coverage(report, bench.args.seeds):
        print(f"  {line}", flush=True)
    print(f"wrote {out / 'report.md'} (and report_arms.csv, report_pairs.csv, report.json, report.png)")


# -------------------------------------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from nnunet_missingmod.evaluation.report import DEFAULT_BOOTSTRAP
    from nnunet_missingmod.training.naming import BUDGETS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (a rerun into it resumes)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu (default): 200/1000/3000 iterations, 3 seeds; gpu: 3000 iterations, 1 seed, CUDA "
                             "(both 3 mm, 30 training and 30 held-out cases)")
    parser.add_argument("--trainers", nargs="+", default=None,
                        help=f"trainers with budget siblings (default {STOCK} {BAR} and the self-distillation one)")
    parser.add_argument("--budgets", nargs="+", choices=list(BUDGETS), default=None,
                        help="budget names (debug = 2 iterations, small = 200, medium = 1000, large = 3000)")
    parser.add_argument("--seeds", type=int, default=None, help="independent training runs per trainer and budget")
    parser.add_argument("--train-cases", type=int, default=None)
    parser.add_argument("--test-cases", type=int, default=None, help="held-out cases")
    parser.add_argument("--spacing", type=float, default=None, help="phantom spacing in mm")
    parser.add_argument("--dataset-id", type=int, default=None,
                        help="train on this existing planned and preprocessed dataset (in $nnUNet_preprocessed) "
                             "instead of generating one; its spacing is the held-out cases'")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--jobs", type=int, default=None, help="trainings (and evaluations) run at once")
    parser.add_argument("--eval-parts", type=int, default=None,
                        help="evaluate -num_parts per model, run as separate jobs and merged (evaluate-merge)")
    parser.add_argument("--fold", default=DEFAULT_FOLD,
                        help="nnU-Net fold to train (default all: every training case; its final validation "
                             "predicts them all)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="resamples per paired interval")
    parser.add_argument("--report-only", action="store_true",
                        help="only write the report, from the evaluations finished so far (each budget with the seeds "
                             "evaluated for every trainer), without taking OUT's lock: beside a run still going")
    parser.add_argument("--report-to", default=None, metavar="DIR",
                        help="with --report-only: write the report files into DIR instead of OUT (OUT is only "
                             "read), e.g. the report of a subset of the trainers beside the full one")
    args = parser.parse_args(argv)
    if args.report_to is not None and not args.report_only:
        parser.error("--report-to needs --report-only (a full run writes its report into --out)")
    preset = PRESETS[args.preset]
    if args.dataset_id is not None and args.train_cases is not None:
        parser.error("--train-cases generates a training set; --dataset-id uses an existing one")
    defaults = {"trainers": [STOCK, BAR, _self_distillation()], "budgets": list(preset.budgets), "seeds": preset.seeds,
                "train_cases": preset.train_cases, "test_cases": preset.test_cases, "device": preset.device,
                "jobs": preset.jobs, "eval_parts": preset.eval_parts}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("seeds", "test_cases", "train_cases", "jobs", "eval_parts", "bootstrap"):
        if getattr(args, key) < (0 if key == "bootstrap" else 1):
            parser.error(f"--{key.replace('_', '-')} must be at least {0 if key == 'bootstrap' else 1}, "
                         f"got {getattr(args, key)}")
    if args.test_cases < 2:
        parser.error(f"--test-cases must be at least 2 (a paired interval needs two cases), got {args.test_cases}")
    return args


def check_trainers(trainers: Sequence[str], budgets: Sequence[str]) -> None:
    from nnunet_missingmod.training.naming import BUDGETS, trainer_registry
    registry = trainer_registry()
    missing = sorted({t + BUDGETS[b].suffix for t in trainers for b in budgets} - set(registry))
    if missing:
        raise MissingModError(f"no such trainer: {', '.join(missing)} (a trainer needs budget siblings, "
                              f"see training/naming.py with_budgets)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from nnunet_missingmod.faults import Terminated, sigterm_raises
    args = parse_args(argv)
    started = time.monotonic()
    try:
        with sigterm_raises():
            run(args)
    except Terminated as e:
        print("robustness_benchmark.py: stopped by SIGTERM; finished trainings and evaluations are kept, rerun the "
              "same command to go on", file=sys.stderr)
        return e.exit_code
    except MissingModError as e:
        print(f"robustness_benchmark.py: error: {e}", file=sys.stderr)
        return 2
    print(f"finished in {time.monotonic() - started:.0f} s")
    return 0


def run(args: argparse.Namespace) -> None:
    """The stages in order; each skips what an earlier run finished."""
    bench = Benchmark(args)
    if args.report_only:
        write_report(bench, bench.stored_data())
        return
    if args.dataset_id is not None:
        spacing = bench.spacing_of_existing_dataset()
        if args.spacing is not None and abs(args.spacing - spacing) > 1e-3:
            raise MissingModError(f"--spacing {args.spacing:g}: dataset {args.dataset_id} has {spacing:g} mm")
    else:
        spacing = args.spacing if args.spacing is not None else PRESETS[args.preset].spacing_mm
    data = DataSettings(spacing, args.train_cases if args.dataset_id is None else 0, args.test_cases,
                        args.dataset_id, args.fold)
    bench.check_marker(data)  # the cheap refusals first, before torch is imported
    check_trainers(args.trainers, args.budgets)
    bench.claim(data)
    bench.data(data)
    bench.train()
    bench.evaluate()
    write_report(bench, data)


if __name__ == "__main__":
    sys.exit(main())
