"""Options and output shared by ``score`` and ``evaluate``: regions, HD95 variant, worker processes, output
folder, paired bootstrap intervals, and the overview printed at the end. Both commands import from here (and not
from each other).

The command line is read once, in the commands' CLI layer, into a frozen :class:`ScoringSettings`
(:func:`scoring_settings_from_args`); everything below it takes typed values, not the argparse namespace."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from nnunet_missingmod.evaluation.lesionwise import DEFAULT_LESION_PROTOCOL, LESION_PROTOCOLS
from nnunet_missingmod.evaluation.metrics import DEFAULT_HD95_VARIANT, HD95_VARIANTS
from nnunet_missingmod.evaluation.regions import REGION_PRESETS
from nnunet_missingmod.evaluation.report import BOOTSTRAP_SEED, DEFAULT_BOOTSTRAP, BootstrapSettings

DEFAULT_NUM_PROCESSES = 2


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``score`` and ``evaluate``: regions, HD95 variant, worker processes, output folder."""
    parser.add_argument("-djfile", "--dataset-json", dest="dataset_json", default=None, metavar="DATASET_JSON",
                        help="nnU-Net dataset.json whose 'labels' define the regions (lists/tuples = regions, e.g. "
                             "\"whole tumor\": [1, 2, 3]) and whose 'file_ending' selects the files")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--regions", default=None, metavar="SPEC",
                       help="regions of plain label maps, e.g. 'WT=1,2,3;TC=2,3;ET=3' (overrides dataset.json)")
    group.add_argument("--format", dest="label_format", choices=sorted(REGION_PRESETS), default=None,
                       help="BraTS label convention of the label maps (the FORMAT of convert/labels-back): "
                            + _format_presets_text() + "; overrides dataset.json")
    parser.add_argument("--hd95-variant", choices=HD95_VARIANTS, default=DEFAULT_HD95_VARIANT,
                        help="whole-volume HD95 (metrics.csv's hd95): max_directed (default): the BraTS 2023 HD95 "
                             "(DeepMind surface-distance: surface elements weighted by area, nearest-rank 95 %%, "
                             "larger direction); voxel_max_directed: max of the two directed 95th percentiles of "
                             "surface-voxel distances, as MONAI; pooled: 95th percentile of both directions pooled, "
                             "as medpy. The lesion-wise HD95 is the BraTS 2023 one (pooled under gli2025)")
    parser.add_argument("--lesion-protocol", dest="lesion_protocol", choices=sorted(LESION_PROTOCOLS),
                        default=DEFAULT_LESION_PROTOCOL,
                        help="BraTS challenge whose lesion-wise rules give metrics.csv's lesion_* columns and the "
                             f"lesion-wise tables (default {DEFAULT_LESION_PROTOCOL}): "
                             + "; ".join(f"{key} = {p.describe()}" for key, p in LESION_PROTOCOLS.items()))
    parser.add_argument("--bootstrap", dest="bootstrap", type=int, default=DEFAULT_BOOTSTRAP, metavar="N",
                        help="resamples of the cases for the 95 %% bootstrap intervals of the paired Dice differences "
                             f"in summary.json/md (default {DEFAULT_BOOTSTRAP}; seed {BOOTSTRAP_SEED}; 0: none)")
    parser.add_argument("--reference", dest="reference", default=None, metavar="TRAINER",
                        help="the model (trainer column of metrics.csv) every other one is compared with in the "
                             "paired intervals (default: the first model)")
    parser.add_argument("-np", "--num-processes", dest="num_processes", type=int, default=DEFAULT_NUM_PROCESSES,
                        help=f"worker processes for scoring, over cases (default {DEFAULT_NUM_PROCESSES})")
    parser.add_argument("-o", "--output", dest="output", required=True, metavar="OUT",
                        help="output folder for metrics.csv, summary.json, summary.md, robustness.png, subsets.png")


def _format_presets_text() -> str:
    """``brats2018/.../fets2022 (WT=1,2,4 TC=1,4 ET=4), ...``: the formats grouped by their region values."""
    groups = {}
    for key in REGION_PRESETS:
        regions = " ".join(f"{r}={','.join(map(str, v))}" for r, v in REGION_PRESETS[key].items())
        groups.setdefault(regions, []).append(key)
    return ", ".join(f"{'/'.join(keys)} ({regions})" for regions, keys in groups.items())


@dataclass(frozen=True)
class ScoringSettings:
    """The options of :func:`add_scoring_arguments`, read once from the command line."""
    output: str
    dataset_json: Optional[str] = None  # -djfile
    regions_spec: Optional[str] = None  # --regions
    label_format: Optional[str] = None  # --format
    hd95_variant: str = DEFAULT_HD95_VARIANT
    num_processes: int = DEFAULT_NUM_PROCESSES
    lesion_protocol: str = DEFAULT_LESION_PROTOCOL  # --lesion-protocol, a LESION_PROTOCOLS key
    bootstrap_resamples: int = DEFAULT_BOOTSTRAP  # --bootstrap; 0: no paired intervals
    reference: Optional[str] = None  # --reference; None: the first model

    def __post_init__(self) -> None:
        BootstrapSettings(n_resamples=self.bootstrap_resamples, reference=self.reference)  # checks both

    @property
    def bootstrap(self) -> BootstrapSettings:
        """The report's paired-interval settings (:class:`~nnunet_missingmod.evaluation.report.BootstrapSettings`)."""
        return BootstrapSettings(n_resamples=self.bootstrap_resamples, reference=self.reference)

    @property
    def regions_given(self) -> bool:
        """Whether the command line chose the regions (else a command may fall back to a model's dataset.json)."""
        return any(v is not None for v in (self.dataset_json, self.regions_spec, self.label_format))


def scoring_settings_from_args(args: argparse.Namespace) -> ScoringSettings:
    """The shared scoring options of a parsed command line; ``-np`` below 1 is one usage error."""
    from nnunet_missingmod.errors import MissingModError
    if args.num_processes < 1:
        raise MissingModError(f"-np must be at least 1, got {args.num_processes}")
    return ScoringSettings(output=args.output, dataset_json=args.dataset_json, regions_spec=args.regions,
                           label_format=args.label_format, hd95_variant=args.hd95_variant,
                           num_processes=args.num_processes, lesion_protocol=args.lesion_protocol,
                           bootstrap_resamples=args.bootstrap, reference=args.reference)


def resolve_scoring_regions(settings: ScoringSettings, default_dataset_json: Optional[str] = None):
    """Regions chosen by ``--regions``, ``--format`` or ``-djfile`` (in that priority); ``default_dataset_json``
    (e.g. the model's) when none of them is given."""
    from nnunet_missingmod.evaluation.regions import resolve_regions
    dataset_json = settings.dataset_json if settings.regions_given else default_dataset_json
    return resolve_regions(dataset_json, settings.regions_spec, settings.label_format)


def scoring_file_ending(settings: ScoringSettings) -> Optional[str]:
    """dataset.json's ``file_ending`` when ``-djfile`` is given, else ``None`` (any label image ending)."""
    if settings.dataset_json is None:
        return None
    from nnunet_missingmod.evaluation.regions import load_dataset_json
    return load_dataset_json(settings.dataset_json).get("file_ending")


def scoring_conventions(settings: ScoringSettings) -> dict:
    """The conventions written into summary.json/md for these settings."""
    from nnunet_missingmod.evaluation.lesionwise import lesion_conventions
    from nnunet_missingmod.evaluation.metrics import conventions
    return {**conventions(settings.hd95_variant), **lesion_conventions(settings.lesion_protocol)}


def print_overview(summary: dict, out_dir: str) -> None:
    print(f"scored {len(summary['cases'])} case(s), regions {', '.join(summary['regions'])}; "
          f"Dice in [0, 1], HD95 in mm ({summary['conventions']['hd95_variant']})")
    for trainer in summary["trainers"]:
        for region in summary["regions"]:
            stats = summary["mean_over_subsets"][trainer][region]
            print(f"  {trainer} {region}: Dice {stats['dice']['mean']:.3f}, HD95 {stats['hd95']['mean']:.2f} mm")
    print(f"wrote {os.path.join(out_dir, 'summary.md')} (and metrics.csv, summary.json, plots)")
