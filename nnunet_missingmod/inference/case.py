"""What a case is for ``predict`` and ``evaluate``, and the per-case steps around the network: read
(:class:`CaseReader`: each present sequence checked: readable, finite, not constant, same geometry; zero images for
the absent ones), prepare (:func:`prepare_case`: nnU-Net's preprocessing, then the absent channels set to exactly 0
*after* normalisation, or a complete case routed to ``--full-set-model``'s preprocessing, :class:`FullSetRoute`) and
export (:func:`export_case`, atomic, with :func:`export_arguments`). What happened to a case is its
:class:`CaseResult` (the content of its sidecar).

These steps run in the main process (:class:`~nnunet_missingmod.inference.predictor.MissingModalityPredictor`) or in
nnU-Net's background workers (:mod:`nnunet_missingmod.inference.pipeline`), so they take what they need as arguments
and import neither of those modules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits

from nnunet_missingmod.atomic_io import atomic_outputs
from nnunet_missingmod.errors import MissingModError
from nnunet_missingmod.faults import is_out_of_memory
from nnunet_missingmod.inference.discovery import CaseFiles
from nnunet_missingmod.inference.nnunet_log import nnunet_output_to
from nnunet_missingmod.modalities import ModalitySubset
from nnunet_missingmod.nifti_checks import GEOMETRY_ATOL, check_nifti_data, error_reason

ROBUST, FULL_SET = "robust", "full-set"  # CaseResult.model: which model segmented a case

# What a clinician should know when a sequence is absent (enhancement is visible only on T1ce; oedema mostly on
# FLAIR and T2).
MISSING_SEQUENCE_WARNINGS = {
    "T1ce": "no T1ce: enhancing tumour and tumour core are unreliable",
    "FLAIR": "no FLAIR: oedema and whole-tumour extent are less reliable",
}


@dataclass
class CaseResult:
    """What happened to one case; also the content of its ``CASE.modalities.json`` sidecar."""
    case: str
    present: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    subset: Optional[str] = None
    files: Dict[str, str] = field(default_factory=dict)
    ignored_files: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    output: Optional[str] = None
    error: Optional[str] = None
    model: Optional[str] = None
    """Which model segmented the case: ``"robust"`` (the missing-modality model), or ``"full-set"`` (the
    ``--full-set-model``, for a case with every sequence it needs)."""

    @property
    def ok(self) -> bool:
        return self.error is None

    def summary_line(self) -> str:
        if not self.ok:
            return f"{self.case}: FAILED: {self.error}"
        missing = ", ".join(self.missing) if self.missing else "none"
        note = f" ({'; '.join(self.warnings)})" if self.warnings else ""
        by = " [full-set model]" if self.model == FULL_SET else ""
        return f"{self.case}: {self.subset} (missing: {missing}){by}{note}"


class LoadedCase(NamedTuple):
    """A case read by :meth:`CaseReader.load`
    (:meth:`~nnunet_missingmod.inference.predictor.MissingModalityPredictor.load_case`)."""
    data: np.ndarray
    """(C, *shape) float32 in the model's channel order, zero images for the absent channels."""
    properties: dict
    subset: ModalitySubset
    """The modalities the case is predicted from: its files, minus those ``--modalities`` left out and constant
    volumes."""
    warnings: List[str]


def _geometry(props: dict) -> Dict[str, np.ndarray]:
    """Spacing plus every numeric geometry entry the reader keeps (SimpleITK: spacing, origin and direction in
    (x, y, z) order, replacing nnU-Net's (z, y, x) spacing; nibabel: the affine)."""
    geometry = {"spacing": np.asarray(props["spacing"], dtype=float)}
    for key, value in props.items():
        if key.endswith("_stuff") and isinstance(value, dict):
            for name, entry in value.items():
                try:
                    geometry[name] = np.asarray(entry, dtype=float)
                except (TypeError, ValueError):
                    pass
    return geometry


class CaseReader:
    """Reads a case's files for a model: the per-case loading of ``predict`` and ``evaluate``, in the main process or
    in a preprocessing worker (it needs only the plans and the model's channel modalities)."""

    def __init__(self, plans_manager, channel_modalities: Sequence[str]):
        self.reader_class = plans_manager.image_reader_writer_class
        self.channel_modalities = list(channel_modalities)

    def load(self, case: CaseFiles) -> LoadedCase:
        """Read a case's files into the model's channel order.

        Raises :class:`MissingModError` naming the case and file for unreadable files, NaN/Inf voxels, mismatched
        geometry, or no usable sequence (saying which files ``--modalities`` left out, if any). A constant volume
        is treated as missing, with a warning.
        """
        if case.error:
            raise MissingModError(case.error)
        reader = self.reader_class()
        images, warnings_, reference = {}, [], None
        for modality, path in sorted(case.files.items(), key=lambda kv: self.channel_modalities.index(kv[0])):
            name = Path(path).name
            check_nifti_data(path, f"case {case.case_id}")
            try:
                image, props = reader.read_images([path])
            except Exception as e:  # nnU-Net's readers raise anything from RuntimeError to AssertionError
                raise MissingModError(f"case {case.case_id}: cannot read {path}: {error_reason(e)}") from None
            if image.shape[0] != 1:  # the reader makes the 4th axis channels; each sequence is one 3-D image
                shape = tuple(image.shape[1:])[::-1] + (image.shape[0],)
                raise MissingModError(f"case {case.case_id}: {path} is 4-D (shape {shape}, x, y, z, t); each "
                                      f"sequence must be a 3-D image in a file of its own")
            n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
            if n_bad:
                raise MissingModError(f"case {case.case_id}: {name} has {n_bad} NaN/Inf voxels")
            if image.size and image.min() == image.max():
                warnings_.append(f"{modality} ({name}) is constant ({image.flat[0]:g}): treated as missing")
                continue
            if reference is None:
                reference = (name, image.shape, props, _geometry(props))
            else:
                self._check_same_geometry(case.case_id, reference, name, image.shape, _geometry(props))
            images[modality] = image[0]
        if not images:
            raise MissingModError(self._no_usable_sequence(case, warnings_))
        shape = reference[1][1:]
        data = np.zeros((len(self.channel_modalities), *shape), dtype=np.float32)
        for channel, modality in enumerate(self.channel_modalities):
            if modality in images:
                data[channel] = images[modality]
        return LoadedCase(data, reference[2], ModalitySubset.from_modalities(images), warnings_)

    def _no_usable_sequence(self, case: CaseFiles, load_warnings: List[str]) -> str:
        reasons = []
        if case.excluded:
            reasons.append(f"--modalities {case.requested} left out its {', '.join(case.excluded)}")
            if not case.files:
                reasons.append(f"it has no {' or '.join(case.requested.modalities)}")
        reasons += load_warnings
        return (f"case {case.case_id}: no usable sequence" + (f" ({'; '.join(reasons)})" if reasons else "")
                + f"; need at least one of {', '.join(self.channel_modalities)}")

    @staticmethod
    def _check_same_geometry(case_id, reference, name, shape, geometry) -> None:
        ref_name, ref_shape, _, ref_geometry = reference
        if tuple(shape) != tuple(ref_shape):
            raise MissingModError(f"case {case_id}: {name} has shape {tuple(shape[1:])[::-1]} (x, y, z) but "
                                  f"{ref_name} has {tuple(ref_shape[1:])[::-1]}")
        for key, ref_value in ref_geometry.items():
            value = geometry.get(key)
            if value is None or value.shape != ref_value.shape or not np.allclose(value, ref_value, rtol=0,
                                                                                 atol=GEOMETRY_ATOL):
                raise MissingModError(f"case {case_id}: {name} has {key} {None if value is None else value.tolist()}"
                                      f" but {ref_name} has {ref_value.tolist()}")


class PreparedCase(NamedTuple):
    """A case read and preprocessed (:func:`prepare_case`), ready for the network; or its failure."""
    result: CaseResult
    """Its record so far (files, subset, warnings; ``error`` if it failed)."""
    data: Optional[torch.Tensor]
    """Preprocessed (C, *shape), all channels as nnU-Net's preprocessing left them (the predictor zeroes the absent
    ones); ``None`` when it failed."""
    properties: Optional[dict]
    subset: Optional[ModalitySubset]


def run_preprocessing(preprocessor, data: np.ndarray, properties: dict, plans_manager, configuration_manager,
                      dataset_json: dict, nnunet_log: Optional[str]) -> Tuple[torch.Tensor, dict]:
    """nnU-Net's preprocessing of a (C, *shape) case, as ``nnUNetv2_predict`` runs it (prints to ``nnunet_log``)."""
    with nnunet_output_to(nnunet_log):
        data, _, properties = preprocessor.run_case_npy(data, None, properties, plans_manager, configuration_manager,
                                                        dataset_json)
    return torch.from_numpy(data), properties


class FullSetRoute(NamedTuple):
    """Where a complete case goes with ``--full-set-model``: that model's channels (as indices into the robust
    model's channel order) and its own preprocessing."""
    channels: Tuple[int, ...]
    modalities: Tuple[str, ...]
    preprocess: Callable[[np.ndarray, dict], Tuple[torch.Tensor, dict]]

    def takes(self, subset: ModalitySubset) -> bool:
        """A case is complete for the full-set model when every sequence it needs was loaded (present, not
        constant, not left out by ``--modalities``)."""
        return all(m in subset.modalities for m in self.modalities)


def prepare_case(case: CaseFiles, reader: CaseReader,
                 preprocess: Callable[[np.ndarray, dict], Tuple[torch.Tensor, dict]],
                 full_set: Optional[FullSetRoute] = None) -> PreparedCase:
    """Read a case (``reader``) and preprocess it (``preprocess``, nnU-Net's); its absent channels are zeroed later, in
    ``MissingModalityPredictor.predict_preprocessed`` with the returned subset. A case complete for ``full_set`` is
    preprocessed by that model's preprocessing instead (its channels: exactly what stock nnU-Net runs) and
    ``result.model`` says which. A bad input is the returned case's error, naming the file; only running out of memory
    raises. The same steps here or in a preprocessing worker."""
    result = CaseResult(case.case_id, ignored_files=dict(case.excluded))
    subset = None
    try:
        data, properties, subset, load_warnings = reader.load(case)
        result.present, result.missing, result.subset = list(subset.modalities), list(subset.missing), subset.name
        result.files = {m: f for m, f in case.files.items() if m in subset.modalities}
        result.warnings = load_warnings + [MISSING_SEQUENCE_WARNINGS[m] for m in subset.missing
                                           if m in MISSING_SEQUENCE_WARNINGS]
        if full_set is not None and full_set.takes(subset):
            result.model = FULL_SET
            preprocessed, properties = full_set.preprocess(data[list(full_set.channels)], properties)
            return PreparedCase(result, preprocessed, properties, ModalitySubset.from_modalities(full_set.modalities))
        result.model = ROBUST
        preprocessed, properties = preprocess(data, properties)
        return PreparedCase(result, preprocessed, properties, subset)
    except MissingModError as e:
        result.error = str(e)
    except Exception as e:  # anything else also fails this case alone, except running out of memory
        if is_out_of_memory(e):
            raise
        result.error = case_failure_message(case.case_id, e)
    return PreparedCase(result, None, None, subset)


def case_failure_message(case_id: str, error: BaseException) -> str:
    return f"case {case_id}: {type(error).__name__}: {error_reason(error)}"


def export_arguments(model, logits: Union[torch.Tensor, np.ndarray], properties: dict,
                     output_file_truncated: str, save_probabilities: bool = False) -> tuple:
    """The arguments of :func:`export_case` for a case predicted by ``model`` (an initialised
    :class:`~nnunet_missingmod.inference.predictor.MissingModalityPredictor`: its ``configuration_manager``,
    ``plans_manager``, ``dataset_json`` and ``nnunet_log``), to run here or hand to an export worker
    (:mod:`nnunet_missingmod.inference.pipeline`). The logits become numpy, as nnU-Net sends them to its export pool,
    so that both paths export the same array. ``export_case(*export_arguments(...))`` writes
    ``output_file_truncated`` + the dataset's file ending (and ``.npz``/``.pkl`` with ``save_probabilities``)."""
    logits = logits.numpy() if isinstance(logits, torch.Tensor) else logits
    return (logits, properties, model.configuration_manager, model.plans_manager, model.dataset_json,
            output_file_truncated, save_probabilities, model.nnunet_log)


def export_case(logits: np.ndarray, properties: dict, configuration_manager, plans_manager, dataset_json: dict,
                output_file_truncated: str, save_probabilities: bool, nnunet_log: Optional[str]) -> str:
    """nnU-Net's export, through :func:`~nnunet_missingmod.atomic_io.atomic_outputs`: a failure (or a full disk,
    or SIGTERM) leaves no partial file and an earlier result as it was. Here or in an export worker."""
    ending = dataset_json["file_ending"]
    suffixes = ([".npz", ".pkl"] if save_probabilities else []) + [ending]  # the segmentation last: it marks done
    with atomic_outputs(output_file_truncated, suffixes) as temporary, nnunet_output_to(nnunet_log):
        export_prediction_from_logits(logits, properties, configuration_manager, plans_manager, dataset_json,
                                      temporary, save_probabilities)
    return output_file_truncated + ending
