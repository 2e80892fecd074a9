"""nnU-Net's predictor, for cases where some MRI sequences are missing.

Per case: read the present sequences (each checked: readable, finite, not constant, same geometry), put them in
the model's channel order with zero images for the absent ones, run nnU-Net's own preprocessing, then set the absent
channels to exactly 0 *after* normalisation (as training zeroes them, and correct for every normalisation scheme,
not only z-score), predict with nnU-Net's sliding window and export with nnU-Net's exporter. With all sequences
present this is exactly what ``nnUNetv2_predict`` computes.

The per-case steps are functions of :mod:`nnunet_missingmod.inference.case` that run in this process or in nnU-Net's
background workers (``-npp``/``-nps``, see :mod:`nnunet_missingmod.inference.pipeline`): :class:`CaseReader` and
:func:`prepare_case` (read, check, preprocess, zero), the network in the main process, :func:`export_case` (atomic).
With ``--full-set-model`` (:meth:`MissingModalityPredictor.use_full_set_model`) a complete case is preprocessed and
predicted by that model instead, exactly as stock nnU-Net would.

One :class:`~nnunet_missingmod.modalities.ModalitySubset` travels through a case: ``--modalities`` is parsed once
into the *requested* subset, :func:`~nnunet_missingmod.inference.discovery.restrict_to` keeps only its files,
:meth:`MissingModalityPredictor.load_case` returns the subset actually *used* (files that exist, minus constant
volumes), and that same object gives the channel mask zeroed in the input and told to the network.

What the checkpoint tells the predictor: what nnU-Net reads (``trainer_name``, ``init_args``, ``network_weights``,
``inference_allowed_mirroring_axes``), and which subsets the model was trained on: ``trained_subsets`` of the
``missingmod_config`` our trainers write into every checkpoint (:func:`trained_subsets_of_checkpoints`; a stock
trainer's checkpoint, without it, was trained on the full set only). A case whose subset the model was not trained
on is predicted with a warning, and its sidecar says so (``trained_for_subset``).

The case's mask reaches the network once, in :meth:`MissingModalityPredictor.predict_preprocessed`: the absent
channels are zeroed there (after nnU-Net's normalisation, as training zeroes them) and every
:class:`~nnunet_missingmod.modalities.PresenceAware` module of the network is told the mask for the whole sliding
window (:func:`~nnunet_missingmod.modalities.tell_present_channels`), then cleared. ``evaluate`` predicts several
subsets of a case in one sliding window (:meth:`MissingModalityPredictor.predict_preprocessed_subsets`): each tile's
masked copies form one batch and the modules are told a (K, C) mask, one row per copy. nnU-Net's own final
validation and stock ``nnUNetv2_predict`` tell nothing: such modules then read presence from their input (the
presence contract in :mod:`nnunet_missingmod.modalities`).
"""
from __future__ import annotations

import json
import os
import traceback
from contextlib import closing
from dataclasses import asdict
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import empty_cache
from tqdm import tqdm

from nnunet_missingmod.atomic_io import DiskFullError, atomic_write_text, holds_folder_alone, remove_stale_temporaries
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.faults import OutOfMemory, Terminated, is_out_of_memory, prediction_out_of_memory_message
from nnunet_missingmod.inference.case import (
    FULL_SET, ROBUST, CaseReader, CaseResult, FullSetRoute, LoadedCase, PreparedCase, case_failure_message,
    export_arguments, export_case, prepare_case, run_preprocessing)
from nnunet_missingmod.inference.discovery import CaseFiles, cases_from_lists, discover_cases, restrict_to
from nnunet_missingmod.inference.nnunet_log import nnunet_output_to
from nnunet_missingmod.inference.pipeline import InlineExports, exports_for, prepared_cases
from nnunet_missingmod.modalities import (
    FULL_SET as FULL_SUBSET, SUBSETS, ModalitySubset, PresenceAware, apply_channel_mask, modalities_from_channel_names,
    parse_subset, subset_of_channel_mask, tell_present_channels)

SIDECAR_SUFFIX = ".modalities.json"


def ensure_trainer_lookup() -> None:
    """Make nnU-Net's trainer lookup find this package's trainers (keeps a user's own nnUNet_extTrainer dirs)."""
    from nnunet_missingmod.training.naming import trainer_dir
    ours = trainer_dir()
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if ours not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(current + [ours])


def as_subset(modalities: Union[ModalitySubset, str, Iterable[str], None]) -> Optional[ModalitySubset]:
    """``--modalities`` as a subset, parsed here once for the Python API (``"T1ce,FLAIR"``, a list of names, or a
    :class:`ModalitySubset` as it is); ``None`` means every file of a case is used."""
    if modalities is None or isinstance(modalities, ModalitySubset):
        return modalities
    return parse_subset(modalities)


def remove_temporaries_of_dead_runs(output_folder: str) -> None:
    """Remove temporary files (of :func:`~nnunet_missingmod.atomic_io.atomic_outputs`) whose process is gone: a run
    killed with SIGKILL while it wrote. Only while holding the whole folder (no live writer on another host)."""
    remove_stale_temporaries(output_folder)


def trained_subsets_of_checkpoints(checkpoints: Sequence[str], trained_by_our_trainer: bool = True
                                   ) -> Tuple[ModalitySubset, ...]:
    """The subsets every one of ``checkpoints`` (one per fold) was trained on, from ``trained_subsets`` of their
    ``missingmod_config``. A checkpoint without it (stock nnU-Net's trainers), or one made by a trainer that is
    not ours (``trained_by_our_trainer`` False) and not exported from ours, was trained on the full set only."""
    from nnunet_missingmod.training.nnunet_copies import CHECKPOINT_CONFIG_KEY
    trained = set(SUBSETS)
    for path in checkpoints:
        try:  # memory-mapped: only the small config is read, not the weights
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # a checkpoint in torch's legacy (non-zip) format cannot be mapped
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        config = checkpoint.get(CHECKPOINT_CONFIG_KEY) if isinstance(checkpoint, dict) else None
        # an export for stock nnU-Net names nnUNetTrainer but keeps our config (nnunet-missingmod export)
        ours = trained_by_our_trainer or (isinstance(config, dict) and "exported_from" in config)
        names = config.get("trained_subsets") if isinstance(config, dict) and ours else None
        if names is None:
            trained &= {FULL_SUBSET}
            continue
        try:
            trained &= {parse_subset(name) for name in names}
        except MissingModError as e:
            raise MissingModError(f"{path}: bad trained_subsets in {CHECKPOINT_CONFIG_KEY}: {e}") from None
    return tuple(s for s in SUBSETS if s in trained)


class _HeadsOfStackedSubsets:
    """The label manager as nnU-Net's sliding window sees it while K subsets share every tile: it sizes its result
    array by ``num_segmentation_heads``, so K times the heads holds the K subsets' logits stacked on that axis."""

    def __init__(self, label_manager, n_subsets: int):
        self._label_manager = label_manager
        self.num_segmentation_heads = label_manager.num_segmentation_heads * n_subsets

    def __getattr__(self, name):
        return getattr(self._label_manager, name)


class MissingModalityPredictor(nnUNetPredictor):
    """:class:`nnUNetPredictor` that accepts any non-empty subset of the sequences per case.

    Entry points as nnU-Net's (``initialize_from_trained_model_folder``, ``predict_from_files``,
    ``predict_single_npy_array``), plus ``predict_case`` for one :class:`CaseFiles` and ``channel_mask`` arguments.
    ``nnunet_log``: a file that receives nnU-Net's own prints while cases are predicted (``None``: the terminal).
    """

    nnunet_log: Optional[str] = None
    model_folder: Optional[str] = None
    """The trained model folder it was initialised from (``None`` after ``manual_initialization``)."""
    full_set_predictor: Optional["MissingModalityPredictor"] = None
    """``--full-set-model``: predicts the cases that have all its sequences (:meth:`use_full_set_model`)."""
    _tile_subset_masks: Optional[torch.Tensor] = None
    """(K, C) bool while :meth:`predict_preprocessed_subsets` batches K subsets per tile, else ``None``."""

    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Union[Tuple[Union[int, str]], None],
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        ensure_trainer_lookup()  # nnU-Net resolves the checkpoint's trainer by name
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self.model_folder = os.path.abspath(model_training_output_dir)
        checkpoints = [os.path.join(model_training_output_dir, f"fold_{f}", checkpoint_name) for f in use_folds]
        self._after_initialization(checkpoints)

    def use_full_set_model(self, full_set: Optional["MissingModalityPredictor"]) -> None:
        """Send each case with every sequence ``full_set`` needs to it (a complete scan then gets exactly that
        model's segmentation, e.g. stock nnU-Net's), every other case to this model. ``None``: this model only.
        Raises :class:`MissingModError` if the two models cannot share a case's files."""
        if full_set is not None:
            name = full_set.model_folder or "the full-set model"
            extra = [m for m in full_set.channel_modalities if m not in self.channel_modalities]
            if extra:
                raise MissingModError(f"--full-set-model {name} needs {', '.join(extra)}, which the robust model "
                                      f"does not read (its channels: {', '.join(self.channel_modalities)})")
            for what, ours, theirs in (
                    ("file ending", self.dataset_json["file_ending"], full_set.dataset_json["file_ending"]),
                    ("image reader", self.plans_manager.image_reader_writer_class.__name__,
                     full_set.plans_manager.image_reader_writer_class.__name__)):
                if ours != theirs:
                    raise MissingModError(f"--full-set-model {name} has {what} {theirs} but the robust model has "
                                          f"{ours}: both must read the same files")
            if full_set.configuration_manager.previous_stage_name:
                raise MissingModError(f"--full-set-model {name}: cascaded configurations are not supported")
        self.full_set_predictor = full_set

    def full_set_route(self, preprocess=None) -> Optional[FullSetRoute]:
        """The :class:`FullSetRoute` of :attr:`full_set_predictor` (``preprocess``: its preprocessing, default
        the predictor's own, in this process)."""
        full = self.full_set_predictor
        if full is None:
            return None
        return FullSetRoute(tuple(self.channel_modalities.index(m) for m in full.channel_modalities),
                            tuple(full.channel_modalities), preprocess or full.preprocess)

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self._after_initialization()

    def _after_initialization(self, checkpoints: Optional[Sequence[str]] = None) -> None:
        """``checkpoints``: the files the weights came from, which say the subsets the model was trained on
        (``None``, after ``manual_initialization``: every subset for one of our trainers, else the full set)."""
        self.channel_modalities = modalities_from_channel_names(self.dataset_json["channel_names"])
        ensure_trainer_lookup()
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunet_missingmod.training.base import MissingModalityTrainerBase
        trainer_class = recursive_find_trainer_class_by_name(self.trainer_name)
        ours = issubclass(trainer_class, MissingModalityTrainerBase)
        if checkpoints is None:
            self.trained_subsets: Tuple[ModalitySubset, ...] = SUBSETS if ours else (FULL_SUBSET,)
        else:
            self.trained_subsets = trained_subsets_of_checkpoints(checkpoints, ours)
        self.trained_for_missing_modalities = any(not s.is_full for s in self.trained_subsets)
        self.preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)

    def trained_for(self, subset: Optional[ModalitySubset]) -> bool:
        """Whether the model was trained on ``subset`` (a case's available sequences)."""
        return subset is not None and subset in self.trained_subsets

    # ------------------------------------------------------------------ loading
    def load_case(self, case: CaseFiles) -> LoadedCase:
        """Read a case's files into the model's channel order (:meth:`CaseReader.load`)."""
        return CaseReader(self.plans_manager, self.channel_modalities).load(case)

    # ------------------------------------------------------------------ predicting
    def preprocess(self, data: np.ndarray, properties: dict) -> Tuple[torch.Tensor, dict]:
        """nnU-Net's preprocessing of a (C, *shape) case, as ``nnUNetv2_predict`` runs it."""
        return run_preprocessing(self.preprocessor, data, properties, self.plans_manager, self.configuration_manager,
                                 self.dataset_json, self.nnunet_log)

    def prepare_case(self, case: CaseFiles) -> PreparedCase:
        """Load and preprocess one case in this process (:func:`prepare_case`)."""
        try:
            return prepare_case(case, CaseReader(self.plans_manager, self.channel_modalities), self.preprocess,
                                self.full_set_route())
        except Exception as e:  # only running out of memory comes here: the one message with the fixes
            self._case_error(case.case_id, e)
            raise

    def predict_preprocessed(self, data: torch.Tensor, subset: ModalitySubset) -> torch.Tensor:
        """Logits for a preprocessed case, predicted from ``subset``: the other channels are zeroed here (the one
        place prediction zeroes them) and the network's presence-aware modules are told the subset's mask for the
        whole sliding window."""
        mask = torch.tensor(subset.channel_mask(self.channel_modalities), dtype=torch.bool)
        data = apply_channel_mask(data, mask, channel_axis=0) if not subset.is_full else data
        tell_present_channels(self.network, mask.to(self.device))
        try:
            with nnunet_output_to(self.nnunet_log):
                return self.predict_logits_from_preprocessed_data(data).cpu()
        finally:
            tell_present_channels(self.network, None)

    def batches_subsets(self) -> bool:
        """Whether the network can take the masked copies of a tile for several subsets as one batch: every network
        can (instance norms and attention work per sample) and every :class:`PresenceAware` module takes a (B, C)
        mask, one row per sample (the presence contract), unless it sets ``per_sample_presence = False``."""
        return all(getattr(module, "per_sample_presence", True) for module in self.network.modules()
                   if isinstance(module, PresenceAware))

    def predict_preprocessed_subsets(self, data: torch.Tensor, subsets: Sequence[ModalitySubset]
                                     ) -> List[torch.Tensor]:
        """Logits of a preprocessed case for each of ``subsets``, in one sliding-window pass: each tile goes through
        the network as one batch of its K masked copies (absent channels zeroed per copy, the presence-aware modules
        told the (K, C) mask), with nnU-Net's mirroring, Gaussian weighting, step and fold averaging per copy as in
        :meth:`predict_preprocessed`. The same segmentations as one pass per subset (a batched convolution may sum
        in another order: logits can differ by float rounding). Memory: K times a tile's activations and K times
        the case's logits; out of memory, the subsets are split in two halves, each predicted so, down to one
        sliding window per subset. One subset, or a network that cannot batch them (:meth:`batches_subsets`): one
        :meth:`predict_preprocessed` per subset."""
        if len(subsets) <= 1 or not self.batches_subsets():
            return [self.predict_preprocessed(data, subset) for subset in subsets]
        try:
            return self._predict_subset_batch(data, subsets)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
        empty_cache(self.device)  # outside the handler: the failed batch's tensors are released
        half = (len(subsets) + 1) // 2
        return (self.predict_preprocessed_subsets(data, subsets[:half])
                + self.predict_preprocessed_subsets(data, subsets[half:]))

    def _predict_subset_batch(self, data: torch.Tensor, subsets: Sequence[ModalitySubset]) -> List[torch.Tensor]:
        masks = torch.tensor([s.channel_mask(self.channel_modalities) for s in subsets], dtype=torch.bool,
                             device=self.device)
        label_manager = self.label_manager
        self._tile_subset_masks = masks
        self.label_manager = _HeadsOfStackedSubsets(label_manager, len(subsets))
        tell_present_channels(self.network, masks)
        try:
            with nnunet_output_to(self.nnunet_log):
                stacked = self.predict_logits_from_preprocessed_data(data).cpu()
        finally:
            tell_present_channels(self.network, None)
            self.label_manager = label_manager
            self._tile_subset_masks = None
        return list(stacked.unflatten(0, (len(subsets), -1)).unbind(0))

    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        """nnU-Net's, on the K masked copies of the tile ``x`` (1, C, *patch) while subsets are batched; their
        logits come back stacked on the channel axis, (1, K * heads, *patch), as the result array holds them."""
        masks = self._tile_subset_masks
        if masks is None:
            return super()._internal_maybe_mirror_and_predict(x)
        copies = apply_channel_mask(x.expand(masks.shape[0], *x.shape[1:]), masks, channel_axis=1)
        prediction = super()._internal_maybe_mirror_and_predict(copies)
        return prediction.reshape(1, -1, *prediction.shape[2:])

    def export(self, logits: Union[torch.Tensor, np.ndarray], properties: dict, output_file_truncated: str,
               save_probabilities: bool = False) -> str:
        """nnU-Net's export, through :func:`~nnunet_missingmod.atomic_io.atomic_outputs` (:func:`export_case`)."""
        return export_case(*export_arguments(self, logits, properties, output_file_truncated, save_probabilities))

    def predict_case(self, case: CaseFiles, output_folder: str, save_probabilities: bool = False) -> CaseResult:
        """Predict one case (already restricted by :func:`restrict_to`) in this process and write ``CASE<ending>``
        and ``CASE.modalities.json``; never raises for bad input: the error is in the returned result (and no
        output file is written for that case)."""
        os.makedirs(output_folder, exist_ok=True)
        with InlineExports() as exports:
            self._predict_prepared(self.prepare_case(case), output_folder, save_probabilities, exports)
            (result, error), = exports.collect(wait=True)
        return self._finish(result, error, output_folder)

    def _predict_prepared(self, prepared: PreparedCase, output_folder: str, save_probabilities: bool,
                          exports) -> None:
        """Predict a prepared case here (the GPU's part) and hand its export to ``exports``; a case that failed
        (now or in its preparation) is handed over with its error, without an export."""
        result = prepared.result
        if result.model == ROBUST and prepared.subset is not None and not self.trained_for(prepared.subset):
            if self.trained_for_missing_modalities:
                result.warnings.append(f"model trained by {self.trainer_name} was not trained on "
                                       f"{prepared.subset.name}: it was not trained for these missing sequences")
            else:
                result.warnings.append(f"model trained by {self.trainer_name}, without modality dropout: it was "
                                       f"not trained for missing sequences")
        if not result.ok:
            exports.failed(result)
            return
        model = self._model_of(result)
        try:
            logits = model.predict_preprocessed(prepared.data, prepared.subset)
        except Exception as e:
            result.error = self._case_error(result.case, e)  # running out of GPU memory ends the run now
            exports.failed(result)
            return
        exports.wait_for_room()
        exports.submit(result, export_arguments(model, logits, prepared.properties,
                                                os.path.join(output_folder, result.case), save_probabilities))

    def _model_of(self, result: CaseResult) -> "MissingModalityPredictor":
        return self.full_set_predictor if result.model == FULL_SET else self

    def _finish(self, result: CaseResult, error: Optional[BaseException], output_folder: str) -> CaseResult:
        """Record a case's outcome: its output, or its error (and no output file); then its sidecar. Stops the run
        with :class:`DiskFullError` or :class:`OutOfMemory` (every later case would fail too)."""
        if error is not None:
            result.error = self._case_error(result.case, error)
        if result.ok:
            result.output = os.path.join(output_folder, result.case + self.dataset_json["file_ending"])
        else:
            self._remove_outputs(os.path.join(output_folder, result.case))  # no stale result of an earlier run
        self._write_sidecar(result, output_folder)
        return result

    def _case_error(self, case_id: str, error: BaseException) -> str:
        """The error message of a failed case; re-raises the errors that end the run instead."""
        if isinstance(error, DiskFullError):
            raise error  # every later case would fail too; the earlier result of this case is kept
        if isinstance(error, MissingModError):
            return str(error)
        if is_out_of_memory(error):
            if self.verbose:
                traceback.print_exception(error)
            raise OutOfMemory(prediction_out_of_memory_message(
                case_id, self.configuration_manager.patch_size, str(self.device))) from None
        return case_failure_message(case_id, error)

    def _remove_outputs(self, output_file_truncated: str) -> None:
        for suffix in (self.dataset_json["file_ending"], ".npz", ".pkl"):
            if os.path.isfile(output_file_truncated + suffix):
                os.remove(output_file_truncated + suffix)

    def _write_sidecar(self, result: CaseResult, output_folder: str) -> None:
        content = asdict(result)
        model = self._model_of(result)  # the model that segmented the case (or would have)
        content["trained_for_missing_modalities"] = model.trained_for_missing_modalities
        content["trained_for_subset"] = (model.trained_for(parse_subset(result.subset)) if result.subset else None)
        content["trainer"] = model.trainer_name
        content["model_folder"] = model.model_folder
        atomic_write_text(os.path.join(output_folder, result.case + SIDECAR_SUFFIX), json.dumps(content, indent=2))

    def predict_from_files(self, list_of_lists_or_source_folder: Union[str, List[List[Optional[str]]]],
                           output_folder_or_list_of_truncated_output_files: str,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = 0, num_processes_segmentation_export: int = 0,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0,
                           modalities: Union[ModalitySubset, str, Sequence[str], None] = None) -> List[CaseResult]:
        """Predict a folder (nnU-Net raw or BraTS layout, sequences may be absent) or nnU-Net's list of lists with
        ``None`` for absent channels. ``modalities`` (a :class:`ModalitySubset`, or text/names parsed once by
        :func:`as_subset`) restricts every case to those sequences.

        As ``nnUNetv2_predict``: ``num_processes_preprocessing`` background processes read and preprocess the next
        cases (nnU-Net's ``preprocessing_iterator_fromfiles``, running our loading and checks) and
        ``num_processes_segmentation_export`` processes export finished ones (nnU-Net's export pool) while this
        process predicts; 0 does that step here, one case after the other (the default of this Python API; the
        command's are nnU-Net's). The segmentations are the same either way. ``overwrite=False`` skips cases whose
        segmentation and sidecar exist. Stops with :class:`DiskFullError` or :class:`OutOfMemory` (every later case
        would fail too), and on SIGTERM (inside :func:`~nnunet_missingmod.faults.sigterm_raises`) with
        :class:`Terminated` carrying ``results`` so far. Results are in the order of the cases.
        """
        if folder_with_segs_from_prev_stage is not None or self.configuration_manager.previous_stage_name:
            raise MissingModError("cascaded configurations are not supported by the missing-modality predictor")
        for flag, value in (("-npp", num_processes_preprocessing), ("-nps", num_processes_segmentation_export)):
            if value < 0:
                raise MissingModError(f"{flag} must be 0 (in this process) or more processes, got {value}")
        output_folder = output_folder_or_list_of_truncated_output_files
        if not isinstance(output_folder, str):
            raise MissingModError("the missing-modality predictor takes an output folder")
        cases = self._cases_to_predict(list_of_lists_or_source_folder, output_folder, overwrite, num_parts, part_id,
                                       as_subset(modalities))  # fails early on an unknown or empty list
        if holds_folder_alone(output_folder):
            remove_temporaries_of_dead_runs(output_folder)
        order = {case.case_id: i for i, case in enumerate(cases)}
        results: List[CaseResult] = []
        show_cases = self.allow_tqdm
        self.allow_tqdm = False  # one bar, over cases: nnU-Net's sliding-window bar would nest inside it
        bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not show_cases)

        def finish(result: CaseResult, error: Optional[BaseException]) -> None:
            results.append(self._finish(result, error, output_folder))
            tqdm.write(results[-1].summary_line())
            bar.update()

        try:
            with exports_for(num_processes_segmentation_export, len(cases)) as exports, \
                    closing(prepared_cases(self, cases, output_folder, num_processes_preprocessing)) as source:
                for prepared in source:
                    self._predict_prepared(prepared, output_folder, save_probabilities, exports)
                    for done in exports.collect(wait=False):
                        finish(*done)
                for done in exports.collect(wait=True):
                    finish(*done)
        except Terminated as stop:  # SIGTERM: the cases being written were removed by atomic_outputs
            stop.results, stop.remaining = results, len(cases) - len(results)
            raise
        finally:
            bar.close()
            self.allow_tqdm = show_cases
        return sorted(results, key=lambda r: order[r.case])

    def _cases_to_predict(self, source: Union[str, List[List[Optional[str]]]], output_folder: str, overwrite: bool,
                          num_parts: int, part_id: int, requested: Optional[ModalitySubset]) -> List[CaseFiles]:
        """The cases of this part (``-num_parts/-part_id``), restricted to ``--modalities``, minus those already
        done when not overwriting; writes dataset.json and plans.json into the output folder, as nnUNetv2_predict
        does (nnUNetv2_apply_postprocessing and ensembling read them from there)."""
        if isinstance(source, str):
            cases = discover_cases(source, self.channel_modalities, self.dataset_json["file_ending"])
        else:
            cases = cases_from_lists(source, self.channel_modalities)
        cases = [restrict_to(case, requested) for case in cases[part_id::num_parts]]
        os.makedirs(output_folder, exist_ok=True)
        save_json(self.dataset_json, os.path.join(output_folder, "dataset.json"), sort_keys=False)
        save_json(self.plans_manager.plans, os.path.join(output_folder, "plans.json"), sort_keys=False)
        ending = self.dataset_json["file_ending"]
        if not overwrite:
            cases = [c for c in cases if not (os.path.isfile(os.path.join(output_folder, c.case_id + ending)) and
                                              os.path.isfile(os.path.join(output_folder, c.case_id + SIDECAR_SUFFIX)))]
        return cases

    def predict_single_npy_array(self, input_image: np.ndarray, image_properties: dict,
                                 segmentation_previous_stage: np.ndarray = None,
                                 output_file_truncated: str = None,
                                 save_or_return_probabilities: bool = False,
                                 channel_mask: Optional[Sequence[bool]] = None):
        """As nnU-Net's, with ``channel_mask`` (C,) bool: absent channels are zeroed after normalisation."""
        if channel_mask is None:
            return super().predict_single_npy_array(input_image, image_properties, segmentation_previous_stage,
                                                    output_file_truncated, save_or_return_probabilities)
        if segmentation_previous_stage is not None:
            raise MissingModError("cascaded configurations are not supported by the missing-modality predictor")
        subset = subset_of_channel_mask(tuple(bool(m) for m in channel_mask), self.channel_modalities)
        data, properties = self.preprocess(np.asarray(input_image, dtype=np.float32), image_properties)
        logits = self.predict_preprocessed(data, subset)
        if output_file_truncated is not None:
            self.export(logits, properties, output_file_truncated, save_or_return_probabilities)
            return None
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, self.plans_manager, self.configuration_manager, self.label_manager, properties,
            return_probabilities=save_or_return_probabilities)

