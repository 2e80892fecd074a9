"""``predict`` as ``nnUNetv2_predict`` runs: background processes preprocess the next cases and export finished
ones while the main process predicts (``-npp``/``-nps``; 0 does that step in the main process).

nnU-Net's own machinery does the work: its ``preprocessing_iterator_fromfiles`` (spawned workers, one queue each,
cases in order) and a spawned ``multiprocessing`` export pool throttled with ``check_workers_alive_and_busy``. Two
adaptations keep our guarantees:

* The iterator's workers call ``configuration_manager.preprocessor_class(...).run_case(entry, ...)`` for each entry
  of its list; :class:`CaseConfigurationManager` makes that class :class:`CasePreprocessor`, and the entries are
  our :class:`~nnunet_missingmod.inference.discovery.CaseFiles`. So a worker runs our per-case loading and checks,
  nnU-Net's preprocessing, and the zeroing of absent channels after normalisation
  (:func:`~nnunet_missingmod.inference.case.prepare_case`); a bad case comes back as an empty array with its
  failure record (file named) in the properties instead of ending the run as nnU-Net's worker would.
* Export workers run :func:`~nnunet_missingmod.inference.case.export_case` (atomic outputs); SIGTERM ends one
  quietly after its temporary files are removed. Sidecars are written by the main process once a case's export
  has finished, so a case with a sidecar is complete (``--continue_prediction``).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from contextlib import contextmanager
from functools import partial
from time import sleep
from typing import Deque, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

from nnunet_missingmod.faults import die_with_parent
from nnunet_missingmod.inference.case import (
    CaseReader, CaseResult, FullSetRoute, PreparedCase, export_case, prepare_case, run_preprocessing)
from nnunet_missingmod.inference.discovery import CaseFiles
from nnunet_missingmod.modalities import modalities_from_channel_names

PREPARED_KEY = "nnunet_missingmod_prepared"
"""Where a worker puts a case's (CaseResult, subset) in the properties it sends; removed before export."""

ALLOWED_QUEUED_EXPORTS = 2  # as nnU-Net: predictions waiting for an export worker before the GPU waits


# ------------------------------------------------------------------------------------------------ preprocessing
class FullSetModel(NamedTuple):
    """What a preprocessing worker needs of ``--full-set-model``: its channels and its preprocessing."""
    channels: Tuple[int, ...]
    modalities: Tuple[str, ...]
    plans_manager: object
    configuration_manager: ConfigurationManager
    dataset_json: dict

    def route(self, nnunet_log: Optional[str], verbose: bool) -> FullSetRoute:
        preprocessor = self.configuration_manager.preprocessor_class(verbose=verbose)

        def preprocess(data, properties):
            return run_preprocessing(preprocessor, data, properties, self.plans_manager, self.configuration_manager,
                                     self.dataset_json, nnunet_log)
        return FullSetRoute(self.channels, self.modalities, preprocess)


class CasePreprocessor:
    """What nnU-Net's preprocessing worker instantiates: ``run_case`` takes a :class:`CaseFiles` instead of a
    list of files and runs :func:`prepare_case` with the configuration's own preprocessor (and, for a complete
    case, the full-set model's)."""

    def __init__(self, preprocessor_class, nnunet_log: Optional[str], full_set: Optional[FullSetModel],
                 verbose: bool = False):
        if multiprocessing.parent_process() is not None:  # nnU-Net's worker: it must not outlive predict
            die_with_parent(signal.SIGKILL)
        self.preprocessor = preprocessor_class(verbose=verbose)
        self.nnunet_log = nnunet_log
        self.full_set = full_set.route(nnunet_log, verbose) if full_set is not None else None

    def run_case(self, case: CaseFiles, seg_file, plans_manager, configuration_manager, dataset_json: dict):
        reader = CaseReader(plans_manager, modalities_from_channel_names(dataset_json["channel_names"]))

        def preprocess(data, properties):
            return run_preprocessing(self.preprocessor, data, properties, plans_manager, configuration_manager,
                                     dataset_json, self.nnunet_log)

        prepared = prepare_case(case, reader, preprocess, self.full_set)
        data = prepared.data.numpy() if prepared.data is not None else np.zeros(0, dtype=np.float32)
        properties = dict(prepared.properties or {})
        properties[PREPARED_KEY] = (prepared.result, prepared.subset)
        return data, None, properties


class CaseConfigurationManager(ConfigurationManager):
    """The model's configuration, whose ``preprocessor_class`` is :class:`CasePreprocessor` around the
    configuration's own preprocessor (sent to nnU-Net's preprocessing workers)."""

    def __init__(self, configuration_dict: dict, nnunet_log: Optional[str], full_set: Optional[FullSetModel] = None):
        super().__init__(configuration_dict)
        self.nnunet_log = nnunet_log
        self.full_set = full_set

    @property
    def preprocessor_class(self):
        return partial(CasePreprocessor, super().preprocessor_class, self.nnunet_log, self.full_set)


def prepared_cases(predictor, cases: Sequence[CaseFiles], output_folder: str, num_processes: int) \
        -> Iterator[PreparedCase]:
    """The cases read and preprocessed, in order: by ``num_processes`` nnU-Net preprocessing workers, or (0) here,
    one at a time. Close it when done: that ends workers still running (after an error or SIGTERM)."""
    if num_processes == 0 or not cases:
        for case in cases:
            yield predictor.prepare_case(case)
        return
    from nnunetv2.inference.data_iterators import preprocessing_iterator_fromfiles
    configuration = CaseConfigurationManager(predictor.configuration_manager.configuration, predictor.nnunet_log,
                                             _full_set_model(predictor))
    before = set(multiprocessing.active_children())
    try:
        with _forked_children_default_sigterm():
            items = preprocessing_iterator_fromfiles(
                list(cases), None, [os.path.join(output_folder, c.case_id) for c in cases], predictor.plans_manager,
                predictor.dataset_json, configuration, num_processes, predictor.device.type == "cuda",
                predictor.verbose_preprocessing)
            for item in items:
                yield _unpacked(item)
    finally:
        _end_workers(set(multiprocessing.active_children()) - before)


def _full_set_model(predictor) -> Optional[FullSetModel]:
    route, full = predictor.full_set_route(), predictor.full_set_predictor
    if route is None:
        return None
    return FullSetModel(route.channels, route.modalities, full.plans_manager, full.configuration_manager,
                        full.dataset_json)


def _unpacked(item: dict) -> PreparedCase:
    properties = item["data_properties"]
    result, subset = properties.pop(PREPARED_KEY)
    if not result.ok:
        return PreparedCase(result, None, None, subset)
    return PreparedCase(result, item["data"], properties, subset)


def _end_workers(children) -> None:
    """End the preprocessing workers of an iterator that was left early (nnU-Net's joins them only at its end);
    its manager process (forked) shuts down through its own finaliser."""
    workers = [p for p in children if isinstance(p, multiprocessing.context.SpawnProcess) and p.is_alive()]
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join(timeout=10)


_default_sigterm_in_forks = False
_forking_pid = 0  # the process whose forks _reset_sigterm_after_fork treats
_fork_hook_registered = False  # _reset_sigterm_after_fork, registered once, when workers are first started


def _reset_sigterm_after_fork() -> None:
    if _default_sigterm_in_forks:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent(signal.SIGKILL, _forking_pid)  # nnU-Net's Manager would outlive a SIGKILLed predict


@contextmanager
def _forked_children_default_sigterm() -> Iterator[None]:
    """nnU-Net's iterator forks a ``Manager`` process, which would inherit ``predict``'s SIGTERM handler (and print
    a traceback when a scheduler sends SIGTERM to the whole job); it gets Python's default instead, and ends with
    ``predict`` (:func:`~nnunet_missingmod.faults.die_with_parent`), also after a SIGKILL. The fork hook is
    registered here, on first use, so that importing this module changes nothing in the process."""
    global _default_sigterm_in_forks, _forking_pid, _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_reset_sigterm_after_fork)
        _fork_hook_registered = True
    _default_sigterm_in_forks, _forking_pid = True, os.getpid()
    try:
        yield
    finally:
        _default_sigterm_in_forks = False


# ------------------------------------------------------------------------------------------------ export
class InlineExports:
    """Exports done at once in this process (``-nps 0``); the interface of :class:`ExportPool`."""

    def __init__(self):
        self.done: Deque[Tuple[CaseResult, Optional[BaseException]]] = deque()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_for_room(self) -> None:
        pass

    def submit(self, result: CaseResult, arguments: tuple) -> None:
        try:
            export_case(*arguments)
            self.done.append((result, None))
        except Exception as e:  # the case's failure (or the run's end: the predictor decides)
            self.done.append((result, e))

    def failed(self, result: CaseResult, error: Optional[BaseException] = None) -> None:
        """A case that failed before its export (its error is in ``result`` or is ``error``)."""
        self.done.append((result, error))

    def collect(self, wait: bool) -> Iterator[Tuple[CaseResult, Optional[BaseException]]]:
        """Finished cases (result, export error or None), in order."""
        while self.done:
            yield self.done.popleft()


class ExportPool(InlineExports):
    """nnU-Net's export pool: ``num_processes`` spawned workers; at most ``ALLOWED_QUEUED_EXPORTS`` predictions wait
    for a worker before the main process waits (as ``predict_from_data_iterator``)."""

    def __init__(self, num_processes: int):
        super().__init__()
        self.pool = multiprocessing.get_context("spawn").Pool(num_processes, initializer=_start_export_worker)
        self.workers = list(self.pool._pool)  # nnU-Net's way to notice a worker killed by the OS
        self.pending: Deque[Tuple[CaseResult, object]] = deque()  # in order; failures wait behind earlier exports

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.pool.close()  # every export was collected: the workers end on their own
        else:
            self.pool.terminate()  # SIGTERM to each: a worker still writing removes its temporary files first
        self.pool.join()
        return False

    def wait_for_room(self) -> None:
        jobs = [job for _, job in self.pending if not isinstance(job, _Failed)]
        while check_workers_alive_and_busy(self.pool, self.workers, jobs, allowed_num_queued=ALLOWED_QUEUED_EXPORTS):
            sleep(0.1)

    def submit(self, result: CaseResult, arguments: tuple) -> None:
        self.pending.append((result, self.pool.apply_async(export_in_worker, arguments)))

    def failed(self, result: CaseResult, error: Optional[BaseException] = None) -> None:
        self.pending.append((result, _Failed(error)))

    def collect(self, wait: bool) -> Iterator[Tuple[CaseResult, Optional[BaseException]]]:
        while self.pending and (wait or self.pending[0][1].ready()):
            result, job = self.pending[0]
            error = self._outcome(job)
            self.pending.popleft()
            yield result, error

    def _outcome(self, job) -> Optional[BaseException]:
        while True:
            if not all(worker.is_alive() for worker in self.workers):
                raise RuntimeError("a segmentation export worker died: it was likely killed by the operating system "
                                   "for lack of CPU memory; use fewer export processes (-nps)")
            try:
                job.get(timeout=0.1)
                return None
            except multiprocessing.TimeoutError:
                continue
            except Exception as e:
                return e


class _Failed:
    """A failed case queued behind earlier exports, so that cases finish in order."""

    def __init__(self, error: Optional[BaseException]):
        self.error = error

    def ready(self) -> bool:
        return True

    def get(self, timeout=None):
        if self.error is not None:
            raise self.error


_exporting = False  # in an export worker: while export_case runs


def export_in_worker(*arguments) -> str:
    """:func:`export_case` in an export worker, marked so that SIGTERM then cleans up (:func:`_quiet_sigterm`)."""
    global _exporting
    _exporting = True
    try:
        return export_case(*arguments)
    finally:
        _exporting = False


def _start_export_worker() -> None:
    """Export workers: SIGTERM handled by :func:`_quiet_sigterm`, and sent when ``predict`` ends (also by SIGKILL),
    so that no worker outlives it and one that is writing removes its temporary files first."""
    _quiet_sigterm()
    die_with_parent(signal.SIGTERM)


def _quiet_sigterm() -> None:
    """Export workers: SIGTERM (the pool ending after an error or SIGTERM, or a scheduler) ends the worker without
    a traceback; during an export it first unwinds, so that :func:`~nnunet_missingmod.atomic_io.atomic_outputs`
    removes what was being written."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum, frame) -> None:
    if not _exporting:
        os._exit(128 + signum)  # nothing being written: nothing to clean up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def exports_for(num_processes: int, num_cases: int) -> InlineExports:
    """Where exports run: an :class:`ExportPool` of ``num_processes`` (at most one per case), or here (0)."""
    if num_processes == 0 or num_cases == 0:
        return InlineExports()
    return ExportPool(min(num_processes, num_cases))

