"""The node entry of a ``PyTorchEstimator`` fit: runs in every PyTorch worker, trains with
``training.fit_worker`` (continuing from the newest intact checkpoint when this attempt
resumes) and hands the result back through the run's store (rank 0): the state dict as
``torch.save`` bytes read back with ``weights_only=True``, history and feature widths as
JSON. It also writes the model wherever ``save(path)`` was asked before a lazily fitted job
ran, and where ``ModelCheckpoint`` asks.
"""

import copy
import json
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..core.types import DataType
from ..errors import CheckpointError
from ..core.export import export_model
from ..core.serialization import write_model_dir
from ..core.spec import spec_for_module
from ..core.checkpoint import Checkpoint, newest_checkpoint, verified_checkpoint
from .context import NodeContext
from ..dataplane.protocol import RunStore
from ..dataplane.store import torch_store
from ..core.engine import TrainSettings, fit_worker, state_from_bytes

__all__ = ["EstimatorEntry", "TrainedResult", "read_trained", "trained_module"]


class TrainedResult:
    """What the client gets back from a fit: the weights, history and feature widths."""

    def __init__(self, state: bytes, history: List[Dict[str, Any]], feature_widths: List[int]):
        self.state, self.history, self.feature_widths = state, history, feature_widths


@dataclass
class ResumeSettings:
    """Where a fit continues from: ``resume_from`` (a directory, for the first attempt) and
    the fit's own ``checkpoint_dir`` (for later attempts)."""

    resume_from: Optional[str] = None
    checkpoint_dir: Optional[str] = None

    def directory(self, attempt: int) -> Optional[str]:
        return self.resume_from if attempt == 0 else (self.checkpoint_dir or self.resume_from)


class EstimatorEntry:
    """Called with each worker's NodeContext by the runtime."""

    def __init__(self, settings: TrainSettings, resume: Optional[ResumeSettings] = None):
        self.settings = settings
        self.resume = resume or ResumeSettings()

    def __call__(self, context: NodeContext) -> Optional[Dict[str, Any]]:
        run = context.run
        columns = context.shard.columns
        n_features = len(self.settings.feature_cols)
        widths = [int(c.shape[1]) if c.ndim == 2 else 1 for c in columns[:n_features]]
        checkpoint = self._resume_point(context)

        def on_epoch(record: Dict[str, Any]) -> None:
            run.set_json(run.keys.progress(record["epoch"]), record)

        def on_batch(position: Dict[str, Any]) -> None:
            run.set_json(run.keys.batch_progress, position)

        def save_model(path: str, model_format: str) -> None:  # for ModelCheckpoint
            _save(copy.deepcopy(self.settings.model), self.settings, widths, path,
                  model_format, {})

        store = torch_store(run.store, run.keys.process_group_prefix + "estimator/")
        if context.rank == 0:
            run.set_json(run.keys.training_started, {"at": time.time(), "resume_epoch":
                                                     checkpoint.epoch if checkpoint else 0})
        result = fit_worker(context.rank, context.world_size, columns, self.settings, store,
                            context.timeout, on_epoch, run.attempt, checkpoint, save_model,
                            on_batch)
        summary = {"rows": result["rows"], "torch_threads": result["torch_threads"],
                   "start_epoch": result["start_epoch"], "epochs": len(result["history"])}
        if context.rank == 0:
            trained = TrainedResult(result.pop("state_dict"), result["history"], widths)
            run.set(run.keys.trained_state, trained.state)
            run.set_json(run.keys.trained_info, {"history": trained.history,
                                                 "feature_widths": widths})
            _serve_save_requests(run, self.settings, trained)
        return summary

    def _resume_point(self, context: NodeContext) -> Optional[Checkpoint]:
        """Rank 0 picks the newest intact checkpoint and tells the others, so that every rank
        loads the same one (the directory must be one every rank reaches)."""
        run = context.run
        directory = self.resume.directory(run.attempt)
        if directory is None:
            return None
        if context.rank == 0:
            checkpoint, skipped = newest_checkpoint(directory)
            if checkpoint is None and run.attempt == 0:
                raise CheckpointError(f"resume_from={directory!r} holds no intact checkpoint"
                                      + (f" ({'; '.join(skipped)})" if skipped else ""))
            run.set_json(run.keys.resume_point, {
                "directory": directory, "epoch": checkpoint.epoch if checkpoint else None,
                "skipped": skipped})
        point = run.get_json(run.keys.resume_point) if context.rank == 0 else \
            _json(run.wait_for(run.keys.resume_point, "rank 0's choice of checkpoint",
                               context.rank))
        if point["epoch"] is None:
            return None
        checkpoint = verified_checkpoint(point["directory"], int(point["epoch"]))
        if checkpoint is None:
            raise CheckpointError(f"Rank {context.rank} cannot read the checkpoint after epoch "
                                  f"{point['epoch']} in {point['directory']!r} that rank 0 "
                                  f"chose: checkpoint_dir must be a directory every "
                                  f"TaskManager reaches at the same path")
        return checkpoint


def _json(data: bytes):
    return json.loads(data.decode("utf-8"))


def read_trained(run: RunStore) -> Optional[TrainedResult]:
    """The trained result once rank 0 published it, else None (the client's side)."""
    if not run.has(run.keys.trained_info):
        return None
    info = run.get_json(run.keys.trained_info)
    return TrainedResult(run.get(run.keys.trained_state), list(info["history"]),
                         [int(w) for w in info["feature_widths"]])


def trained_module(settings: TrainSettings, trained: TrainedResult) -> torch.nn.Module:
    """A copy of the settings' module holding the trained weights, in eval mode."""
    module = copy.deepcopy(settings.model)
    module.load_state_dict(state_from_bytes(trained.state))
    return module.eval()


def _save(module: torch.nn.Module, settings: TrainSettings, widths: List[int], path: str,
          model_format: str, extra: Dict[str, Any], prediction_col: str = "prediction",
          overwrite: bool = True) -> None:
    """Write ``module`` in the library's model format, as ``PyTorchModel.save`` would."""
    types = [DataType.from_name(t) for t in settings.feature_types]
    spec = spec_for_module(module, settings.feature_cols, types, widths, prediction_col)
    write_model_dir(path, model_format, export_model(module, spec, model_format), spec,
                    dict(extra, input_names=list(spec.feature_cols)), overwrite=overwrite)


def _serve_save_requests(run: RunStore, settings: TrainSettings, trained: TrainedResult) -> None:
    """Lazy fits: write the model wherever ``model.save(path)`` was asked before the job ran."""
    count = run.count(run.keys.save_requests)
    if not count:
        return
    module = trained_module(settings, trained)
    for index in range(count):
        request = run.get_json(run.keys.save_request(index))
        _save(module, settings, trained.feature_widths, request["path"], request["format"],
              request.get("extra") or {}, request["prediction_col"], request["overwrite"])

