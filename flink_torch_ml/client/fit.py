"""A ``PyTorchEstimator`` fit as the public API sees it, in the client: start it (now, with new
attempts after lost workers, or as part of a StatementSet), know when it is done, take its
result, and have a lazily fitted model saved once trained. What travels through the run's
store (progress, the trained weights, save requests) stays behind this interface."""

import contextlib
import logging
import os
import threading
import weakref
from typing import Any, Dict, List, NamedTuple, Optional

import torch
from pyflink.table import StatementSet, Table

from ..core.engine import TrainSettings
from ..dataplane.protocol import RunStore
from ..worker.estimator_entry import EstimatorEntry, ResumeSettings, TrainedResult, \
    read_trained, trained_module
from .job import results_sink
from .progress import EpochPrinter
from .run import DistributedRun

__all__ = ["BatchFit", "FitOutcome", "ResumeSettings"]

log = logging.getLogger("flink_torch_ml")


class FitOutcome(NamedTuple):
    """What a fit hands the model it returns."""

    module: torch.nn.Module
    feature_widths: List[int]
    history: List[Dict[str, Any]]
    summaries: List[Dict[str, Any]]  # one per rank (eager fits only)


class BatchFit:
    """One fit of ``settings`` on ``table`` by ``worker_num`` workers: validated and its job
    built at construction; run by :meth:`run_now` (up to ``max_failures`` new attempts, each
    resuming from the newest checkpoint) or :meth:`run_in` a StatementSet (the result is kept
    once the job is done, and the run's store released)."""

    def __init__(self, table: Table, settings: TrainSettings, worker_num: int, timeout: float,
                 verbose: bool = False, max_failures: int = 0,
                 resume: Optional[ResumeSettings] = None):
        self._settings, self._verbose, self._max_failures = settings, verbose, max_failures
        self._resume = resume or ResumeSettings()
        self._run = DistributedRun(
            table, EstimatorEntry(settings, self._resume), worker_num, {}, timeout,
            ship_by_value=[settings.model, settings.loss, settings.optimizer_creator,
                           settings.loop, *settings.callbacks, *settings.metrics.values()],
            by_content=True)
        self._lock = threading.Lock()
        self._trained: Optional[TrainedResult] = None
        self._summaries: List[Dict[str, Any]] = []

    def _printer(self) -> EpochPrinter:
        return EpochPrinter(self._run.run_store(), self._settings.max_epochs, self._verbose)

    def run_now(self) -> None:
        """Run the fit's job now, and keep its result (or raise the first worker's error)."""
        def announce(error: BaseException, attempt: int) -> None:
            where = self._resume.checkpoint_dir
            _log(f"attempt {attempt - 1} failed ({_first_line(error)}); starting attempt "
                 f"{attempt} of {self._max_failures + 1}, resuming from "
                 + (f"the newest checkpoint in {where!r}" if where else
                    "the start (no checkpoint_dir)"), self._verbose)

        @contextlib.contextmanager
        def printing():
            printer = self._printer()
            printer.start()
            try:
                yield
            finally:
                printer.stop()

        try:
            self._summaries = self._run.collect_with_retries(self._max_failures, announce,
                                                             printing)
            self._trained = read_trained(self._run.run_store())
        finally:
            self._run.release()

    def run_in(self, statement_set: StatementSet) -> None:
        """Add the fit's job to ``statement_set``; its result is kept when the set ran it."""
        statement_set.add_insert(results_sink(), self._run.results)
        printer = self._printer()
        printer.start()

        me = weakref.ref(self)  # the janitor's thread must not hold (and free) Java objects

        def keep(run: RunStore) -> None:
            printer.stop()
            trained = read_trained(run)
            holder = me()
            if holder is not None:
                with holder._lock:
                    holder._trained = trained

        self._run.release_when_done(keep)

    def _current(self) -> Optional[TrainedResult]:
        with self._lock:
            if self._trained is None and not self._run.released:
                try:
                    self._trained = read_trained(self._run.run_store())
                except OSError:  # released meanwhile
                    pass
            return self._trained

    def ready(self) -> bool:
        """True once the workers handed back the trained weights."""
        return self._current() is not None

    def result(self) -> Optional[FitOutcome]:
        """The trained module, feature widths, history and per-rank summaries; None while
        the job has not run."""
        trained = self._current()
        if trained is None:
            return None
        return FitOutcome(trained_module(self._settings, trained), trained.feature_widths,
                          trained.history, self._summaries)

    def request_save(self, path: str, format: str, overwrite: bool, prediction_col: str,
                     extra: Dict[str, Any]) -> None:
        """Ask the workers to write the model at ``path`` once trained (a lazy fit)."""
        run = self._run.run_store()
        index = run.add(run.keys.save_requests, 1) - 1
        run.set_json(run.keys.save_request(index), {
            "path": os.path.abspath(path), "format": format, "overwrite": overwrite,
            "prediction_col": prediction_col, "extra": extra})


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _log(message: str, verbose: bool) -> None:
    log.warning("flink-torch-ml: %s", message)
    if verbose:
        print(f"[flink-torch-ml] {message}", flush=True)
