"""``nnunet-missingmod export``: a slim copy of a trained model folder (inference weights only), as a folder laid
out like ``$nnUNet_results`` or a zip in ``nnUNetv2_export_model_to_zip``'s layout."""
from __future__ import annotations

from nnunet_missingmod.atomic_io import human_size


def _export(args) -> int:
    from nnunet_missingmod.export.slim import export_model
    result = export_model(args.model_folder, args.out, folds=args.f, checkpoint_name=args.chk, as_zip=args.zip)
    folds = " ".join(map(str, result.folds))
    print(f"exported fold(s) {folds} of {result.source_trainer} into {result.written}: "
          f"{human_size(result.exported_bytes)} of checkpoints (the source's: {human_size(result.source_bytes)}), "
          f"inference weights only")
    model = f"-d {result.dataset_name} -c {result.configuration} -f {folds} -p {result.plans_name}"
    install = (f"nnUNetv2_install_pretrained_model_from_zip {args.out}, then " if args.zip
               else f"nnUNet_results={args.out} ")
    if result.stock_compatible:
        print(f"stock nnU-Net loads it as {result.trainer_name}, without this plugin: {install}nnUNetv2_predict "
              f"-i INPUT -o OUTPUT {model}; give a missing sequence as a zero-filled file (all voxels 0, the "
              f"geometry of the other files)")
    else:
        print(f"{result.source_trainer} does not predict with nnU-Net's own U-Net: the export keeps its trainer "
              f"name and needs nnunet-missingmod installed where it runs ({install}nnunet-missingmod predict "
              f"-i INPUT -o OUTPUT {model} -tr {result.trainer_name}, or nnUNetv2_predict with "
              f"nnUNet_extTrainer=$(nnunet-missingmod trainer-dir))")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="a trained model folder with inference weights only, for stock nnU-Net where possible",
        description="Copy a trained model folder without what only training needs (optimiser, grad scaler, "
                    "teacher, discriminator, snapshot or EMA teacher): each checkpoint keeps the inference network, "
                    "nnU-Net's keys and the missingmod_config the predictor reads; dataset.json, plans.json, "
                    "dataset_fingerprint.json and the post-processing of the folds come along. A trainer whose "
                    "network is nnU-Net's own U-Net (FullSetTrainer, the dropout trainers, TwoPhaseDistillTrainer, "
                    "RobustifyTrainer) is exported as nnUNetTrainer, which stock nnU-Net loads without this "
                    "plugin; the others (MST-KD, CCSD, presence-conditioned norms) keep their trainer name and "
                    "need the plugin. The source is never modified.")
    p.add_argument("model_folder", metavar="MODEL_FOLDER",
                   help="trained model folder (TRAINER__PLANS__CONFIGURATION, with plans.json, dataset.json and "
                        "fold_X)")
    p.add_argument("out", metavar="OUT",
                   help="output folder laid out like $nnUNet_results: the model goes to "
                        "OUT/DatasetXXX_NAME/TRAINER__PLANS__CONFIGURATION; with --zip the zip file to write. An "
                        "earlier export there is replaced, anything else is refused")
    p.add_argument("-f", nargs="+", help="folds to export. Default: every fold_X with the checkpoint")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint name. Default: checkpoint_final.pth")
    p.add_argument("--zip", action="store_true",
                   help="write OUT as a zip for nnUNetv2_install_pretrained_model_from_zip")
    p.set_defaults(func=_export)
