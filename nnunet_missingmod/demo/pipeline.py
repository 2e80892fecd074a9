"""The demo's stages, each run as a real command (ours or nnU-Net's) with its output in ``OUT/logs/``, a progress bar
and the time left; a stage whose outputs already exist in ``OUT`` is reused instead of run again.

Layout of ``OUT``::

    .nnunet-missingmod-demo      marker (JSON: the data settings); a non-empty folder without it is refused
    sources/train, sources/test  phantom cases in the BraTS 2021 layout (test ids offset by TEST_INDEX_OFFSET)
    nnUNet_raw, nnUNet_preprocessed, nnUNet_results
    evaluation/<trainer>/        evaluate's metrics.csv, summary.json, summary.md, robustness.png, subsets.png,
                                 cases/CASE.png (best, median, worst case) and predictions/
    comparison.md, comparison.json, comparison.png
    comparison_case.png          every trainer's segmentations of the median test case, side by side
    logs/                        every command's output
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from tqdm import tqdm

from nnunet_missingmod.demo import costs
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.training.naming import BUDGETS
from nnunet_missingmod.training.methods.selfdistill.trainer import SELF_DISTILLATION_TRAINER

MARKER_NAME = ".nnunet-missingmod-demo"  # the same name run_demo.sh used, so old demo folders are recognised
TRAIN_DATASET_ID, TRAIN_DATASET_NAME = 500, "DemoTrain"
TEST_DATASET_ID, TEST_DATASET_NAME = 501, "DemoTest"
TEST_INDEX_OFFSET = 1000  # test case ids BraTS2021_01000... never collide with training ids BraTS2021_00000...
TRAIN_SEED, TEST_SEED = 0, 1000
SOURCE_FORMAT = "brats2021"
CONFIGURATION = "3d_fullres"
FOLD = "all"  # train on every training case: the held-out test dataset is the evaluation
PLANS = "nnUNetPlans"

DEFAULT_BUDGET = {"cpu": "small", "cuda": "medium"}
STOCK_TRAINER = "FullSetTrainer"
STOCK_LABEL = "stock nnU-Net"
# Stock nnU-Net, the bar (cardinality dropout), the self-distillation single model, and the two methods in the variants
# that fit the device (CPU: the _small networks; GPU: the sizes that meet the cost targets at nnU-Net's BraTS plans).
DEFAULT_TRAINERS = {
    "cpu": (STOCK_TRAINER, "ModalityDropoutTrainer_cardinality", SELF_DISTILLATION_TRAINER, "MSTKDTrainer_small",
            "CCSDTrainer_small", "DeMoSegTrainer_small"),
    "cuda": (STOCK_TRAINER, "ModalityDropoutTrainer_cardinality", SELF_DISTILLATION_TRAINER, "MSTKDTrainer_vitSmall",
             "CCSDTrainer_small", "DeMoSegTrainer_small"),
}
# evaluate's background workers (-npp/-nps) on a GPU, as nnU-Net's defaults; on the CPU the demo's few small
# cases make each worker's start (it imports torch) cost more than it overlaps (benchmarks/bench_evaluate.py: 0.68x
# with one worker each on 2 cores)
EVALUATE_PIPELINE = {"cpu": ("-npp", "0", "-nps", "0"), "cuda": ()}
ROUTED_STAGE_TITLE = "evaluate the routed pair"
# The routed pair's robust model: the bar. Stock segments complete scans, so the pair's complete-scan Dice is
# stock's and its 15-subset mean is the bar's plus (stock - bar on complete scans) / 15: at or above the bar
# wherever stock beats it on complete scans.
DEFAULT_ROUTED = "ModalityDropoutTrainer_cardinality"


@dataclass(frozen=True)
class DataSettings:
    """What the data stages produce; stored in the marker so that a rerun cannot mix two different data sets."""

    cases: int
    test_cases: int
    spacing_mm: float


@dataclass
class DemoSettings:
    out: Path
    trainers: List[str]  # base names, e.g. ModalityDropoutTrainer (the budget suffix is added per run)
    budget: str
    device: str  # cpu or cuda (auto already resolved)
    data: DataSettings
    verbose: bool = False
    skipped: List[str] = field(default_factory=list)  # default trainers that are not registered here
    # the robust trainer that the routed pair sends incomplete cases to (cli.resolve_routed: one of trainers, with
    # stock among them), or None: no routed pair
    routed: Optional[str] = None

    def trainer_class(self, trainer: str) -> str:
        return trainer + BUDGETS[self.budget].suffix


def column_label(trainer: str) -> str:
    return STOCK_LABEL if trainer == STOCK_TRAINER else trainer


def routed_column_label(trainer: str) -> str:
    return f"routed: stock + {trainer}"


# ------------------------------------------------------------------------------------------------- output folder
def claim_output_folder(out: Path, data: DataSettings) -> str:
    """Create or accept ``out`` and hold its lock (:func:`~nnunet_missingmod.atomic_io.claim_folder`) while the demo
    runs: a second demo (or any command of ours) writing there refuses, naming this process. A new or empty folder
    gets our marker; a folder with our marker must hold the same data settings; any other non-empty folder is
    refused (the demo writes and may replace files there). Returns "new" or "existing"."""
    from nnunet_missingmod.atomic_io import FOLDER_LOCK_NAME, claim_folder, release_folder

    marker = out / MARKER_NAME
    if out.exists() and not out.is_dir():
        raise MissingModError(f"--out {out}: exists and is not a folder")
    claim_folder(str(out), "demo")
    try:
        if any(p.name != FOLDER_LOCK_NAME for p in out.iterdir()) and not marker.is_file():
            raise MissingModError(f"--out {out}: the folder is not empty and was not made by the demo (no "
                                  f"{MARKER_NAME} in it); choose a new or empty folder")
        if marker.is_file():
            try:
                stored = DataSettings(**json.loads(marker.read_text()))
            except (ValueError, TypeError) as e:
                raise MissingModError(f"--out {out}: {marker} is not a marker of this version of the demo ({e}); "
                                      f"choose a new folder or delete this one") from None
            if stored != data:
                raise MissingModError(f"--out {out} holds a demo made with --cases {stored.cases} "
                                      f"({stored.test_cases} test cases, {stored.spacing_mm:g} mm), not --cases "
                                      f"{data.cases} ({data.test_cases}, {data.spacing_mm:g} mm); use those or "
                                      f"another --out")
            return "existing"
    except MissingModError:
        release_folder(str(out))
        raise
    marker.write_text(json.dumps(asdict(data)) + "\n")
    return "new"


# ------------------------------------------------------------------------------------------------ command runner
def console_script(name: str) -> str:
    """nnU-Net's console scripts next to this Python (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise MissingModError(f"{name} not found next to {sys.executable} or on PATH; is nnunetv2 installed?")
    return found


def our_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "nnunet_missingmod.cli", *map(str, args)]


def format_duration(seconds: float) -> str:
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class CommandRunner:
    """Runs one stage's command with its output appended to ``logs/<name>.log`` (and shown with ``verbose``), under
    a progress bar whose position ``count_done(lines_so_far)`` gives, polled twice a second."""

    def __init__(self, out: Path, env: Dict[str, str], verbose: bool):
        self.logs = out / "logs"
        self.env = env
        self.verbose = verbose

    def run(self, title: str, command: Sequence[str], log_name: str, total: int, unit: str,
            count_done: Callable[[List[str]], int], estimate_s: float,
            extra_env: Optional[Dict[str, str]] = None) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{log_name}.log"
        env = dict(self.env, **(extra_env or {}))
        lines: List[str] = []
        started = time.monotonic()
        with open(log_path, "a", encoding="utf-8") as log, \
                tqdm(total=total, desc=title, unit=unit, dynamic_ncols=True,
                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} "
                                "[{elapsed}<{remaining}{postfix}]") as bar:
            bar.set_postfix_str(f"estimated {format_duration(estimate_s)}", refresh=False)
            log.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                       text=True, errors="replace", bufsize=1)

            def pump() -> None:  # text mode turns tqdm's carriage returns into line ends
                for line in process.stdout:
                    log.write(line)
                    log.flush()
                    lines.append(line)
                    if self.verbose and line.strip():
                        bar.write(line.rstrip())

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                while process.poll() is None:
                    self._advance(bar, count_done(lines), total)
                    time.sleep(0.5)
            except KeyboardInterrupt:
                process.terminate()
                process.wait()
                raise
            reader.join()
            if process.returncode == 0:
                self._advance(bar, count_done(lines), total)
        if process.returncode != 0:
            tail = "".join(lines[-25:]).rstrip()
            raise MissingModError(f"{title} failed (exit code {process.returncode}) after "
                                  f"{format_duration(time.monotonic() - started)}: {' '.join(command)}\n"
                                  f"--- last lines of {log_path} ---\n{tail}")
        return log_path

    @staticmethod
    def _advance(bar: tqdm, done: int, total: int) -> None:
        done = min(max(done, 0), total)
        if done != bar.n:
            bar.update(done - bar.n)


# glibc's malloc hands freed blocks above its mmap threshold, and the heap's free top above its trim threshold, back
# to the kernel, and the next training step faults the pages of its activations in again: on the 2-core test machine
# (transparent huge pages only on madvise) that was a fifth of a 3 mm training's CPU time, 140,000 minor faults per
# second. Both thresholds above any tensor (either alone is not enough) keep the blocks for reuse; for nnU-Net's
# commands on a CPU only (CUDA tensors do not come from malloc).
CPU_ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2 ** 32), "MALLOC_TRIM_THRESHOLD_": str(2 ** 32)}


# ----------------------------------------------------------------------------------------------------- the stages
class DemoPipeline:
    def __init__(self, settings: DemoSettings):
        from nnunet_missingmod.training.naming import trainer_dir
        self.s = settings
        out = settings.out
        self.sources = out / "sources"
        self.raw, self.preprocessed, self.results = (out / "nnUNet_raw", out / "nnUNet_preprocessed",
                                                     out / "nnUNet_results")
        self.evaluation = out / "evaluation"
        env = dict(os.environ)
        env.update(nnUNet_raw=str(self.raw), nnUNet_preprocessed=str(self.preprocessed),
                   nnUNet_results=str(self.results), nnUNet_extTrainer=trainer_dir(), nnUNet_compile="f",
                   PYTHONUNBUFFERED="1")
        if settings.device == "cpu":
            # data augmentation in the main process: on a CPU, worker processes only compete with the training
            env.update(nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", **CPU_ALLOCATOR_ENV)
        self.runner = CommandRunner(out, env, settings.verbose)
        self.budget_iterations = costs.budget_iterations(settings.budget)
        self.timings: Dict[str, float] = {}

    # paths -----------------------------------------------------------------------------------------------------
    def dataset_dir(self, root: Path, dataset_id: int, name: str) -> Path:
        return root / f"Dataset{dataset_id:03d}_{name}"

    def model_dir(self, trainer: str) -> Path:
        return (self.dataset_dir(self.results, TRAIN_DATASET_ID, TRAIN_DATASET_NAME)
                / f"{self.s.trainer_class(trainer)}__{PLANS}__{CONFIGURATION}")

    def checkpoint(self, trainer: str) -> Path:
        return self.model_dir(trainer) / f"fold_{FOLD}" / "checkpoint_final.pth"

    def evaluation_dir(self, trainer: str) -> Path:
        return self.evaluation / self.s.trainer_class(trainer)

    def routed_evaluation_dir(self) -> Path:
        return self.evaluation / f"routed_{self.s.trainer_class(self.s.routed)}"

    def routed_entry(self) -> str:
        """The routed pair's trainer label in its evaluation (what ``evaluate --full-set-model`` names it)."""
        from nnunet_missingmod.evaluation.evaluate import routed_label
        return routed_label(self.s.trainer_class(self.s.routed), self.s.trainer_class(STOCK_TRAINER))

    def test_images_labels(self):
        test = self.dataset_dir(self.raw, TEST_DATASET_ID, TEST_DATASET_NAME)
        return test / "imagesTr", test / "labelsTr"

    # driver ----------------------------------------------------------------------------------------------------
    def stage_list(self) -> List[tuple]:
        stages = [("phantom cases on ICBM152 anatomy", self.phantom),
                  ("convert (brats2021 layout → nnU-Net raw)", self.convert),
                  (f"nnUNetv2_plan_and_preprocess -c {CONFIGURATION}", self.plan)]
        stages += [(f"nnUNetv2_train {self.s.trainer_class(t)}", lambda title, t=t: self.train(t, title))
                   for t in self.s.trainers]
        stages += [(f"evaluate {self.s.trainer_class(t)} (15 subsets)", lambda title, t=t: self.evaluate(t, title))
                   for t in self.s.trainers]
        if self.s.routed is not None:
            stages.append((f"{ROUTED_STAGE_TITLE} (complete scans → stock nnU-Net, others → {self.s.routed})",
                           self.evaluate_routed))
        return stages

    def run(self) -> None:
        stages = self.stage_list()
        for number, (title, stage) in enumerate(stages, start=1):
            started = time.monotonic()
            reused = stage(f"[{number}/{len(stages)}] {title}")
            if reused:
                print(f"[{number}/{len(stages)}] {title}: reused ({reused})")
            else:
                self.timings[title] = time.monotonic() - started
                print(f"[{number}/{len(stages)}] {title}: done in {format_duration(self.timings[title])}")

    # stages: each returns a description of what it reused, or None when it ran ---------------------------------
    def phantom(self, title: str) -> Optional[str]:
        d = self.s.data
        parts = [("train", d.cases, TRAIN_SEED, 0), ("test", d.test_cases, TEST_SEED, TEST_INDEX_OFFSET)]
        if all((self.sources / name).is_dir() for name, *_ in parts):
            return f"{d.cases} training and {d.test_cases} test cases in {self.sources}"
        total = d.cases + d.test_cases
        for name, n, seed, first_index in parts:
            final = self.sources / name
            if final.is_dir():
                continue
            partial = self.sources / f"{name}.partial"  # renamed when complete, so a folder present is finished
            shutil.rmtree(partial, ignore_errors=True)
            before = d.cases if name == "test" else 0
            self.runner.run(
                f"{title} ({name})",
                our_command("phantom", partial, "-n", n, "--layout", SOURCE_FORMAT, "--spacing", d.spacing_mm,
                            "--seed", seed, "--first-index", first_index),
                "phantom", total, "case",
                lambda _lines, p=partial, b=before: b + (sum(1 for e in p.iterdir() if e.is_dir())
                                                         if p.is_dir() else 0),
                costs.phantom_seconds(n, d.spacing_mm))
            partial.rename(final)
        return None

    def convert(self, title: str) -> Optional[str]:
        targets = [(TRAIN_DATASET_ID, TRAIN_DATASET_NAME, "train"), (TEST_DATASET_ID, TEST_DATASET_NAME, "test")]
        done = [self.dataset_dir(self.raw, i, n) / "dataset.json" for i, n, _ in targets]
        if all(p.is_file() for p in done):  # our converter renames a complete dataset into place
            return f"{done[0].parent.name}, {done[1].parent.name} in {self.raw}"
        for (dataset_id, name, source), _ in zip(targets, done):
            self.runner.run(f"{title} ({name})",
                            our_command("convert", SOURCE_FORMAT, self.sources / source, dataset_id, "--name", name),
                            "convert", 1, "dataset",
                            lambda _lines, p=self.dataset_dir(self.raw, dataset_id, name): int(
                                (p / "dataset.json").is_file()),
                            costs.convert_seconds(self.s.data))
        return None

    def _preprocessed_cases(self) -> int:
        folder = self.dataset_dir(self.preprocessed, TRAIN_DATASET_ID, TRAIN_DATASET_NAME) / f"{PLANS}_{CONFIGURATION}"
        return len(list(folder.glob("*.pkl"))) if folder.is_dir() else 0

    def plan(self, title: str) -> Optional[str]:
        dataset = self.dataset_dir(self.preprocessed, TRAIN_DATASET_ID, TRAIN_DATASET_NAME)
        n = self.s.data.cases
        if (dataset / f"{PLANS}.json").is_file() and self._preprocessed_cases() >= n:
            return f"{PLANS}.json and {n} preprocessed cases in {dataset}"
        workers = "1" if self.s.device == "cpu" else "4"  # each worker imports torch: costly on a small CPU
        self.runner.run(
            title,
            [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(TRAIN_DATASET_ID), "-c", CONFIGURATION,
             "-npfp", workers, "-np", workers, "--verify_dataset_integrity"],
            "plan_and_preprocess", n + 1, "step",
            lambda _lines: int((dataset / "dataset_fingerprint.json").is_file()) + self._preprocessed_cases(),
            costs.plan_seconds(self.s.data),
            extra_env={"nnUNet_n_proc_DA": "1"})  # nnUNet_n_proc_DA=0 crashes planning in 2.8.1
        return None

    def train(self, trainer: str, title: str) -> Optional[str]:
        checkpoint = self.checkpoint(trainer)
        if checkpoint.is_file():
            return str(checkpoint)
        epochs, per_epoch = self.budget_iterations
        n_val = self.s.data.cases  # fold "all": nnU-Net's final validation predicts every training case
        epoch_done = re.compile(r"Epoch time: ")
        epoch_start = re.compile(r"Epoch (\d+)\s*$")

        def steps_done(lines: List[str]) -> int:
            # --c resumes from checkpoint_latest: count from the epoch the log says, not from 0
            epoch, finished = None, 0
            for line in lines:
                m = epoch_start.search(line)
                if m:
                    epoch = int(m.group(1))
                elif epoch is not None and epoch_done.search(line):
                    finished = epoch + 1
            validated = sum(1 for line in lines if "predicting " in line)
            return finished * per_epoch + validated

        self.runner.run(
            title,
            [console_script("nnUNetv2_train"), str(TRAIN_DATASET_ID), CONFIGURATION, FOLD, "-tr",
             self.s.trainer_class(trainer), "-p", PLANS, "-device", self.s.device, "--c"],
            f"train_{self.s.trainer_class(trainer)}", epochs * per_epoch + n_val, "step", steps_done,
            costs.training_seconds(trainer, self.s.budget, self.s.device, self.s.data))
        if not checkpoint.is_file():
            raise MissingModError(f"nnUNetv2_train finished but wrote no {checkpoint}; see {self.runner.logs}")
        return None

    def evaluate(self, trainer: str, title: str) -> Optional[str]:
        return self._evaluate(title, self.evaluation_dir(trainer), ["-m", str(self.model_dir(trainer))],
                              f"evaluate_{self.s.trainer_class(trainer)}", self.s.data.test_cases * 15,
                              costs.evaluation_seconds(trainer, self.s.device, self.s.data))

    def evaluate_routed(self, title: str) -> Optional[str]:
        """``evaluate -m ROBUST --full-set-model STOCK``: the command a user runs; it predicts both models again
        (no pictures), a small price at the demo's size for showing the real command's output."""
        robust = self.s.routed
        seconds = (costs.evaluation_seconds(robust, self.s.device, self.s.data)
                   + costs.evaluation_seconds(STOCK_TRAINER, self.s.device, self.s.data))
        return self._evaluate(title, self.routed_evaluation_dir(),
                              ["-m", str(self.model_dir(robust)), "--full-set-model",
                               str(self.model_dir(STOCK_TRAINER)), "--figures", "0"],
                              "evaluate_routed", self.s.data.test_cases * 15 * 2, seconds)

    def _evaluate(self, title: str, out: Path, models: List[str], log_name: str, total: int,
                  seconds: float) -> Optional[str]:
        if (out / "summary.json").is_file():
            return str(out / "summary.json")
        images, labels = self.test_images_labels()
        predictions = out / "predictions"
        command = our_command("evaluate", "-i", images, "-l", labels, *models, "-f", FOLD,
                              "-device", self.s.device, "--disable_tta", "-np", "1", "-o", out,
                              *EVALUATE_PIPELINE[self.s.device])
        if self.s.verbose:
            command.append("--verbose")
        self.runner.run(
            title, command, log_name, total, "prediction",
            lambda _lines: len(list(predictions.glob("*/*/*.nii.gz"))) if predictions.is_dir() else 0, seconds)
        if not (out / "summary.json").is_file():
            raise MissingModError(f"evaluate finished but wrote no {out / 'summary.json'}; see {self.runner.logs}")
        return None
