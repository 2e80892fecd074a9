"""One-call GPU check of every method at nnU-Net's BraTS plans: step cost under AMP, real training, prediction.

On a lent GPU machine, after the set-up of ``../shared/gpu/README.md`` (within its 8-minute call):

    source .whl/on_device.sh && python benchmarks/gpu_check.py --out $OUT/gpu_check.json

1. **Step cost** (``bench_train_cost.py --config brats --device cuda --pairwise``): every default trainer's
   ``train_step`` at the BraTS 3d_fullres plans (128^3, batch 2, 6 stages 32..320) under CUDA AMP, eager, each
   interleaved with stock ``nnUNetTrainer``: ms/step and ``torch.cuda.max_memory_allocated``, both relative to stock;
   then ``nnUNet_compile=t`` for stock and the self-distillation trainer.
2. **Training** on phantoms: a 3 mm phantom dataset, planned and preprocessed by nnU-Net, then ``nnUNetv2_train`` of
   each method's ``_200iters`` sibling (200 iterations), all methods at once on the one GPU; the per-epoch train
   loss (from ``checkpoint_final.pth``) must be finite and falling.
3. **Prediction**: ``nnUNetv2_predict`` of each trained model on one 240x240x155 (1 mm) phantom case; the
   segmentation must have the input's shape.

It prints one table and writes everything as JSON (``--out``). ``--smoke`` runs the same steps at toy sizes on the
CPU (small config, 8 mm phantoms, ``_debug`` budgets) to test the script where no GPU is lent. No test depends on it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from nnunet_missingmod.training.methods.selfdistill.trainer import SELF_DISTILLATION_TRAINER
from nnunet_missingmod.training.naming import BUDGETS

HERE = Path(__file__).resolve().parent
BENCH = HERE / "bench_train_cost.py"
COMPILED = [SELF_DISTILLATION_TRAINER, "ModalityDropoutTrainer_cardinality"]  # timed compiled: the first registered
STEP_TRAINERS = ["nnUNetTrainer", "ModalityDropoutTrainer", "ModalityDropoutTrainer_cardinality",
                 SELF_DISTILLATION_TRAINER, "MSTKDTrainer", "MSTKDTrainer_frozenTeacher", "MSTKDTrainer_vitSmall",
                 "MSTKDTrainer_noGSME", "CCSDTrainer", "CCSDTrainer_2subsets", "CCSDTrainer_small"]
METHODS = ["FullSetTrainer", "ModalityDropoutTrainer_cardinality", SELF_DISTILLATION_TRAINER, "MSTKDTrainer",
           "MSTKDTrainer_vitSmall", "CCSDTrainer", "CCSDTrainer_small"]
TRAIN_ID, PREDICT_ID = 991, 992


def run(command: List[str], env: dict, timeout: float, log: Path) -> subprocess.CompletedProcess:
    print("$ " + " ".join(command), flush=True)
    with open(log, "a") as out:
        try:
            return subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            out.write(f"\nTIMEOUT after {timeout:.0f} s\n")
            return subprocess.CompletedProcess(command, 124)


def registered(names: List[str]) -> List[str]:
    from nnunet_missingmod.training.naming import trainer_registry
    known = set(trainer_registry()) | {"nnUNetTrainer"}
    return [n for n in names if n in known]


def step_costs(args, work: Path, env: dict, compiled: str) -> Dict[str, dict]:
    """Eager AMP step of every trainer (pairwise with stock), then stock and ``compiled`` compiled."""
    results = {}
    common = [sys.executable, str(BENCH), "--config", "small" if args.smoke else "brats", "--device", args.device,
              "--pairwise", "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", "4"]
    for mode, trainers, extra, timeout in (
            ("eager", registered(STEP_TRAINERS), [], 200),
            ("compiled", registered(["nnUNetTrainer", compiled]), ["--compile", "--no-memory"], 150)):
        if args.device == "cpu" and mode == "compiled":
            continue
        out = work / f"steps_{mode}.json"
        result = run(common + ["--trainers", ",".join(trainers), "--json", str(out)] + extra, env, timeout,
                     work / "steps.log")
        rows = json.loads(out.read_text())["rows"] if out.is_file() else []
        for row in rows:
            results.setdefault(row["trainer"], {})[mode] = row
        if result.returncode:
            print(f"note: step costs ({mode}) ended with code {result.returncode}; see {work / 'steps.log'}")
    return results


def phantom_dataset(dataset_id: int, name: str, cases: int, spacing: float, work: Path) -> Path:
    from nnunet_missingmod.conversion.convert import convert_dataset
    from nnunet_missingmod.conversion.phantom import write_phantom_dataset
    source = work / f"phantom_{dataset_id}"
    write_phantom_dataset(source, cases, "brats2021", spacing=spacing, seed=dataset_id, progress=False)
    convert_dataset("brats2021", source, dataset_id, name=name, progress=False)
    return Path(os.environ["nnUNet_raw"]) / f"Dataset{dataset_id:03d}_{name}"


def train_losses(checkpoint: Path) -> List[float]:
    import torch
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return [float(v) for v in state["logging"]["train_losses"]]


def train_and_predict(args, work: Path, env: dict, methods: List[str]) -> Dict[str, dict]:
    budget = BUDGETS["debug" if args.smoke else "small"].suffix
    spacing = 8.0 if args.smoke else 3.0
    phantom_dataset(TRAIN_ID, "GpuCheck", 5 if args.smoke else 8, spacing, work)  # nnU-Net splits 5 folds
    predict_raw = phantom_dataset(PREDICT_ID, "GpuCheckFull", 1, spacing if args.smoke else 1.0, work)
    log = work / "train.log"
    run(["nnUNetv2_plan_and_preprocess", "-d", str(TRAIN_ID), "-c", "3d_fullres", "-np", "4",
         "--verify_dataset_integrity"], env, 240, log)
    env = dict(env, nnUNet_n_proc_DA="0" if args.smoke else "2")
    results = {m: {} for m in methods}
    started = time.monotonic()
    # all methods at once: one GPU has room for all of them at the phantom's patch
    processes = {}
    for method in methods:
        command = ["nnUNetv2_train", str(TRAIN_ID), "3d_fullres", "0", "-tr", method + budget]
        if args.device == "cpu":
            command += ["-device", "cpu"]
        with open(work / f"train_{method}.log", "w") as out:
            processes[method] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    for method, process in processes.items():
        try:
            code = process.wait(timeout=max(10.0, args.train_timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            code = 124
        results[method]["train_exit"] = code
        results[method]["train_s"] = round(time.monotonic() - started, 1)
        folder = Path(env["nnUNet_results"]) / f"Dataset{TRAIN_ID:03d}_GpuCheck" / \
            f"{method + budget}__nnUNetPlans__3d_fullres" / "fold_0"
        checkpoint = folder / "checkpoint_final.pth"
        if checkpoint.is_file():
            losses = train_losses(checkpoint)
            results[method]["train_losses"] = losses
            results[method]["loss_ok"] = bool(losses) and all(math.isfinite(v) for v in losses) and \
                (len(losses) < 2 or losses[-1] < losses[0])
        else:
            results[method]["loss_ok"] = False
    case_images = predict_raw / "imagesTr"
    import SimpleITK as sitk
    first_image = sorted(case_images.glob("*_0000.nii.gz"))[0]
    input_shape = sitk.ReadImage(str(first_image)).GetSize()
    for method in methods:
        if not results[method].get("train_losses"):  # no checkpoint_final.pth (a timeout in the final validation
            continue                                 # still leaves one)
        out_dir = work / f"predicted_{method}"
        command = ["nnUNetv2_predict", "-i", str(case_images), "-o", str(out_dir), "-d", str(TRAIN_ID), "-c",
                   "3d_fullres", "-f", "0", "-tr", method + budget, "-chk", "checkpoint_final.pth"]
        if args.device == "cpu":
            command += ["-device", "cpu"]
        start = time.monotonic()
        code = run(command, env, 120, work / "predict.log").returncode
        predicted = sorted(out_dir.glob("*.nii.gz"))
        shape = sitk.ReadImage(str(predicted[0])).GetSize() if predicted else None
        results[method].update(predict_exit=code, predict_s=round(time.monotonic() - start, 1),
                               predict_shape=shape, input_shape=input_shape,
                               predict_ok=code == 0 and shape == input_shape)
    return results


def table(steps: Dict[str, dict], methods: Dict[str, dict]) -> str:
    def fmt(value, pattern):
        return "-" if value is None else pattern.format(value)
    lines = [f"{'trainer':36s} {'ms/step':>8s} {'x stock':>8s} {'peak GiB':>9s} {'x stock':>8s} {'compiled':>9s} "
             f"{'x stock':>8s}  phantom training / predict"]
    for name in dict.fromkeys(list(steps) + list(methods)):
        eager, compiled = steps.get(name, {}).get("eager", {}), steps.get(name, {}).get("compiled", {})
        m = methods.get(name) or methods.get("FullSetTrainer" if name == "nnUNetTrainer" else "", {}) or {}
        losses = m.get("train_losses")
        training = "-" if not m else (
            f"{'ok' if m.get('loss_ok') else 'FAIL'} loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses
            else f"FAIL (exit {m.get('train_exit')})")
        if "predict_exit" in m:
            training += f" / {'ok' if m.get('predict_ok') else 'FAIL'} {m.get('predict_s')} s"
        peak = eager.get("peak_mib")
        peak_gib = None if peak is None else peak / 1024
        lines.append(f"{name:36s} {fmt(eager.get('ms_per_step'), '{:.0f}'):>8s} "
                     f"{fmt(eager.get('time_ratio'), '{:.2f}'):>8s} {fmt(peak_gib, '{:.1f}'):>9s} "
                     f"{fmt(eager.get('memory_ratio'), '{:.2f}'):>8s} "
                     f"{fmt(compiled.get('ms_per_step'), '{:.0f}'):>9s} "
                     f"{fmt(compiled.get('time_ratio'), '{:.2f}'):>8s}  {training}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check.json", help="JSON file for all results")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes on the CPU, to test the script")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--train-timeout", type=float, default=200.0, help="seconds for all trainings together")
    parser.add_argument("--skip-steps", action="store_true", help="only training and prediction")
    parser.add_argument("--methods", default=None, help="comma-separated trainers to train and predict with "
                        f"(default: those of {', '.join(METHODS)} that are registered)")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.steps, args.warmup = "cpu", 1, 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                          nnUNet_results=str(work / "results"))
        from nnunet_missingmod.training.naming import trainer_dir
        env = dict(os.environ, nnUNet_extTrainer=trainer_dir(), nnUNet_compile="f")
        compiled = registered(COMPILED)[0]
        steps = {} if args.skip_steps else step_costs(args, work, env, compiled)
        methods = train_and_predict(args, work, env, registered(args.methods.split(",") if args.methods else METHODS))
        text = table(steps, methods)
        print("\n" + text)
        import torch
        report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "compiled_trainer": compiled, "seconds": round(time.monotonic() - started, 1),
                  "steps": steps, "methods": methods, "table": text}
        for log in work.glob("*.log"):  # the logs' tails, for a failure's cause (the work folder is deleted)
            report.setdefault("log_tails", {})[log.name] = log.read_text(errors="replace")[-3000:]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
