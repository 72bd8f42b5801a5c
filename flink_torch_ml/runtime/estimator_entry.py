"""The node entry of a ``PyTorchEstimator`` fit: runs in every PyTorch worker, trains with
``training.fit_worker`` and hands the result back through the run's store (rank 0): the
state dict as ``torch.save`` bytes read back with ``weights_only=True``, history and feature
widths as JSON. It also writes the model wherever ``save(path)`` was asked before a lazily
fitted job ran.
"""

import copy
from typing import Any, Dict, List, Optional

import torch

from ..data_types import DataType
from ..scoring.export import export_model
from ..scoring.serialization import write_model_dir
from ..scoring.spec import spec_for_module
from .context import NodeContext
from .protocol import RunStore
from .store import torch_store
from .training import TrainSettings, fit_worker, state_from_bytes

__all__ = ["EstimatorEntry", "TrainedResult", "read_trained", "trained_module"]


class TrainedResult:
    """What the client gets back from a fit: the weights, history and feature widths."""

    def __init__(self, state: bytes, history: List[Dict[str, Any]], feature_widths: List[int]):
        self.state, self.history, self.feature_widths = state, history, feature_widths


class EstimatorEntry:
    """Called with each worker's NodeContext by the runtime."""

    def __init__(self, settings: TrainSettings):
        self.settings = settings

    def __call__(self, context: NodeContext) -> Optional[Dict[str, Any]]:
        run = context.run
        columns = context.shard.columns
        widths = [int(c.shape[1]) if c.ndim == 2 else 1
                  for c in columns[:len(self.settings.feature_cols)]]

        def on_epoch(record: Dict[str, Any]) -> None:
            run.set_json(run.keys.progress(record["epoch"]), record)

        store = torch_store(run.store, run.keys.process_group_prefix + "estimator/")
        result = fit_worker(context.rank, context.world_size, columns, self.settings, store,
                            context.timeout, on_epoch)
        if context.rank != 0:
            return None
        trained = TrainedResult(result.pop("state_dict"), result["history"], widths)
        run.set(run.keys.trained_state, trained.state)
        run.set_json(run.keys.trained_info, {"history": trained.history,
                                             "feature_widths": widths})
        _serve_save_requests(run, self.settings, trained)
        return {"rows": result["rows"], "torch_threads": result["torch_threads"]}


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


def _serve_save_requests(run: RunStore, settings: TrainSettings, trained: TrainedResult) -> None:
    """Lazy fits: write the model wherever ``model.save(path)`` was asked before the job ran."""
    count = run.count(run.keys.save_requests)
    if not count:
        return
    module = trained_module(settings, trained)
    types = [DataType.from_name(t) for t in settings.feature_types]
    for index in range(count):
        request = run.get_json(run.keys.save_request(index))
        spec = spec_for_module(module, settings.feature_cols, types, trained.feature_widths,
                               request["prediction_col"])
        write_model_dir(request["path"], request["format"],
                        export_model(module, spec, request["format"]), spec,
                        dict(request.get("extra") or {}, input_names=list(spec.feature_cols)),
                        overwrite=request["overwrite"])

