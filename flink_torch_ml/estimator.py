"""PyTorchEstimator: a FlinkML-style Estimator whose ``fit`` trains a model with data-parallel
PyTorch inside a Flink job and returns a PyTorchModel. The user never writes a training loop.
"""

import copy
import io
import json
import logging
import os
import pickle
import threading
from typing import Any, Dict, Optional

import numpy as np
import torch
from pyflink.table import DataTypes, Schema, StatementSet, Table, TableDescriptor
from pyflink.table.expressions import col

from .api import Estimator, write_flinkml_metadata
from .data_types import DataType
from .errors import NotFittedError, SchemaError, UnsupportedTypeError
from .model import PyTorchModel
from .params import (BooleanParam, FloatParam, IntParam, ObjectParam, ParamValidator,
                     ParamValidators, StringArrayParam, StringParam)
from .training import BUILTIN_METRICS, TrainSettings, fit_worker

__all__ = ["PyTorchEstimator"]

log = logging.getLogger("flink_torch_ml")

_FEATURE_TYPES = {DataType.FLOAT_32, DataType.FLOAT_64, DataType.INT_32, DataType.INT_64,
                  DataType.FLOAT_32_ARRAY, DataType.FLOAT_64_ARRAY}


def _is_validation(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, float) and 0.0 < value < 1.0


def _is_metrics(value) -> bool:
    if value is None:
        return True
    items = value.items() if isinstance(value, dict) else [(v, v) for v in value]
    return all((isinstance(k, str) and (callable(m) or m in BUILTIN_METRICS)) for k, m in items)


class PyTorchEstimator(Estimator):
    """Trains ``model`` on a Flink table with ``worker_num`` DistributedDataParallel workers.

    ``PyTorchEstimator(model, loss, optimizer_creator, feature_cols=[...], label_col="y",
    max_epochs=5, batch_size=128, worker_num=2)``; ``fit(table)`` returns a trained
    PyTorchModel. Passing a StatementSet first (as in DL-on-Flink) makes ``fit`` lazy: the job
    is added to the set, and the returned model gets its weights when the set executes.
    """

    MODEL = ObjectParam("model", "The torch.nn.Module to train.")
    LOSS = ObjectParam("loss", "loss(prediction, label) -> scalar tensor, e.g. nn.MSELoss().")
    OPTIMIZER_CREATOR = ObjectParam("optimizer_creator",
                                    "Callable[[nn.Module], torch.optim.Optimizer].")
    FEATURE_COLS = StringArrayParam("feature_cols", "Feature columns, in forward() order.", None)
    LABEL_COL = StringParam("label_col", "The label column.", None)
    PREDICTION_COL = StringParam("prediction_col", "Prediction column of the fitted model.",
                                 "prediction", ParamValidators.not_null())
    MAX_EPOCHS = IntParam("max_epochs", "Passes over the table.", 1, ParamValidators.gt(0))
    BATCH_SIZE = IntParam("batch_size", "Rows per batch, per worker.", 32,
                          ParamValidators.gt(0))
    WORKER_NUM = IntParam("worker_num", "Number of DDP workers (Flink subtasks).", 1,
                          ParamValidators.gt(0))
    LR_SCHEDULER_CREATOR = ObjectParam(
        "lr_scheduler_creator", "Callable[[Optimizer], LRScheduler], stepped once per epoch.")
    SEED = IntParam("seed", "Seed for weights' init order, shuffling and validation split.", 0)
    SHUFFLE = BooleanParam("shuffle", "Shuffle each worker's rows every epoch.", True)
    VALIDATION = ObjectParam(
        "validation", "A fraction of rows held out (0 < f < 1), or a BOOLEAN column marking "
        "validation rows.", None, ParamValidator(_is_validation,
                                                 "None, a float in (0, 1) or a column name"))
    METRICS = ObjectParam(
        "metrics", "Metric names ('accuracy', 'mse', 'mae') or {name: fn(prediction, label)}.",
        None, ParamValidator(_is_metrics, "a list of 'accuracy'/'mse'/'mae' or a dict of "
                                          "callables"))
    VERBOSE = BooleanParam("verbose", "Log one line per epoch while the job runs.", False)
    TIMEOUT = FloatParam("timeout", "Seconds any distributed wait may take.", 180.0,
                         ParamValidators.gt(0))

    def __init__(self, *args, **kwargs):
        statement_set = kwargs.pop("statement_set", None)
        if args and isinstance(args[0], StatementSet):
            statement_set, args = args[0], args[1:]
        if len(args) > 3:
            raise TypeError("PyTorchEstimator takes at most (statement_set, model, loss, "
                            "optimizer_creator) positionally; pass the rest by name")
        for name, value in zip(("model", "loss", "optimizer_creator"), args):
            if name in kwargs:
                raise TypeError(f"PyTorchEstimator got {name} twice")
            kwargs[name] = value
        self._init_params(**kwargs)
        if statement_set is not None and not isinstance(statement_set, StatementSet):
            raise TypeError(f"statement_set must be a pyflink StatementSet, got "
                            f"{type(statement_set).__name__}")
        self._statement_set = statement_set

    def __getattr__(self, name: str):
        # get_<param>() / set_<param>(value) accessors for every parameter
        for prefix in ("get_", "set_"):
            if name.startswith(prefix) and not name.startswith("__"):
                param = type(self)._param_named(name[len(prefix):])
                if param is not None:
                    if prefix == "get_":
                        return lambda: self.get(param)
                    return lambda value: self.set(param, value)
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @classmethod
    def _param_named(cls, name: str):
        for param in cls._declared_params():
            if param.name == name:
                return param
        return None

    # ------------------------------------------------------------------ fit
    def fit(self, *inputs: Table) -> PyTorchModel:
        """Train on ``inputs[0]`` inside a Flink job; return the trained PyTorchModel."""
        if len(inputs) != 1:
            raise ValueError(f"fit takes exactly one table, got {len(inputs)}")
        table = inputs[0]
        if not isinstance(table, Table):
            raise TypeError(f"fit expects a pyflink Table, got {type(table).__name__}")
        settings, select = self._settings(table)
        from .pytorch_utils import _Run

        entry = _EstimatorEntry(settings)
        run = _Run(table.select(*[col(c) for c in select]), entry, self.get(self.WORKER_NUM),
                   {}, self.get(self.TIMEOUT),
                   ship_by_value=[settings.model, settings.loss, settings.optimizer_creator,
                                  settings.lr_scheduler_creator,
                                  *settings.metrics.values()])
        model = PyTorchModel(None, settings.feature_cols, self.get(self.PREDICTION_COL))
        model._feature_types = [DataType.from_name(t) for t in settings.feature_types]
        model._t_env = table._t_env
        progress = _Progress(run.store(), self.get(self.MAX_EPOCHS), self.get(self.VERBOSE))
        if self._statement_set is not None:
            sink = (TableDescriptor.for_connector("blackhole")
                    .schema(Schema.new_builder().column("shard", DataTypes.INT())
                            .column("node_result", DataTypes.BYTES()).build()).build())
            self._statement_set.add_insert(sink, run.results)
            model._pending = _PendingTraining(run, settings, progress)
            progress.start()
            return model
        progress.start()
        try:
            results = run.collect()
        finally:
            progress.stop()
        _PendingTraining(run, settings, progress).apply(model, results[0]["entry_result"])
        model._fit_summaries = [{k: v for k, v in r.items() if k != "entry_result"}
                                for r in results]
        return model

    def _settings(self, table: Table):
        """Validate params against the table; the settings shipped to the workers."""
        problems = []
        model, loss = self.get(self.MODEL), self.get(self.LOSS)
        optimizer_creator = self.get(self.OPTIMIZER_CREATOR)
        if not isinstance(model, torch.nn.Module):
            problems.append(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss):
            problems.append("loss must be callable, e.g. torch.nn.MSELoss()")
        if not callable(optimizer_creator):
            problems.append("optimizer_creator must be a callable taking the model and "
                            "returning an optimizer")
        features = self.get(self.FEATURE_COLS)
        label = self.get(self.LABEL_COL)
        if not features:
            problems.append("feature_cols is not set")
        if not label:
            problems.append("label_col is not set")
        if problems:
            raise ValueError("PyTorchEstimator is not configured: " + "; ".join(problems))
        schema = table.get_resolved_schema()
        names = list(schema.get_column_names())
        types = dict(zip(names, schema.get_column_data_types()))
        validation = self.get(self.VALIDATION)
        wanted = list(features) + [label] + ([validation] if isinstance(validation, str) else [])
        missing = [c for c in wanted if c not in types]
        if missing:
            raise SchemaError(f"Column(s) {', '.join(map(repr, missing))} not found in the "
                              f"table; its columns are: {', '.join(names)}")
        if label in features:
            raise SchemaError(f"label_col {label!r} is also a feature column")
        feature_types = []
        for c in features:
            data_type = DataType.from_flink(types[c], c)
            if data_type not in _FEATURE_TYPES:
                raise UnsupportedTypeError(f"Feature column {c!r} is {data_type.type_name}; "
                                           f"features must be FLOAT, DOUBLE, INT, BIGINT, "
                                           f"ARRAY<FLOAT> or ARRAY<DOUBLE>")
            feature_types.append(data_type.type_name)
        label_type = DataType.from_flink(types[label], label)
        if label_type not in _FEATURE_TYPES:
            raise UnsupportedTypeError(f"Label column {label!r} is {label_type.type_name}; a "
                                       f"label must be a float or integer scalar or a float "
                                       f"array")
        if isinstance(validation, str):
            from pyflink.table.types import BooleanType
            if not isinstance(types[validation], BooleanType):
                raise UnsupportedTypeError(f"Validation column {validation!r} must be BOOLEAN")
        metrics = self.get(self.METRICS) or {}
        if not isinstance(metrics, dict):
            metrics = {m: m for m in metrics}
        metrics = {n: (BUILTIN_METRICS[m] if isinstance(m, str) else m)
                   for n, m in metrics.items()}
        settings = TrainSettings(
            model=model, loss=loss, optimizer_creator=optimizer_creator,
            feature_cols=list(features), feature_types=feature_types, label_col=label,
            label_type=label_type.type_name, max_epochs=self.get(self.MAX_EPOCHS),
            batch_size=self.get(self.BATCH_SIZE),
            lr_scheduler_creator=self.get(self.LR_SCHEDULER_CREATOR), seed=self.get(self.SEED),
            shuffle=self.get(self.SHUFFLE), validation=validation, metrics=metrics)
        return settings, wanted

    # ------------------------------------------------------------------ save / load
    def save(self, path: str) -> None:
        """Save the parameters (JSON) and the model and callables (cloudpickle: loading them
        runs code, so load estimators only from trusted paths)."""
        import cloudpickle

        os.makedirs(path, exist_ok=True)
        simple, objects = {}, {}
        for param, value in self.get_param_map().items():
            (objects if isinstance(param, ObjectParam) else simple)[param.name] = value
        with open(os.path.join(path, "estimator.json"), "w") as f:
            json.dump({"class": "PyTorchEstimator", "params": simple}, f, indent=2)
        with open(os.path.join(path, "objects.pkl"), "wb") as f:
            cloudpickle.dump(objects, f)
        write_flinkml_metadata(self, path)

    @classmethod
    def load(cls, t_env, path: str) -> "PyTorchEstimator":
        with open(os.path.join(path, "estimator.json")) as f:
            params = json.load(f)["params"]
        with open(os.path.join(path, "objects.pkl"), "rb") as f:
            objects = pickle.load(f)
        estimator = cls()
        for name, value in {**params, **objects}.items():
            estimator.set(estimator._param_by_name(name), value)
        return estimator


class _EstimatorEntry:
    """The node entry of an estimator's training job (runs in every worker)."""

    def __init__(self, settings: TrainSettings):
        self.settings = settings

    def __call__(self, context) -> Optional[Dict[str, Any]]:
        batches = list(context.buffer.iter_batches())
        columns = batches[0] if len(batches) == 1 else [np.concatenate(parts)
                                                         for parts in zip(*batches)]
        del batches
        widths = [int(c.shape[1]) if c.ndim == 2 else 1
                  for c in columns[:len(self.settings.feature_cols)]]
        store = context.store

        def on_epoch(record):
            store.set(f"progress/{record['epoch']}", json.dumps(record))

        result = fit_worker(context.rank, context.world_size, columns, self.settings, store,
                            context.timeout, on_epoch)
        if context.rank != 0:
            return None
        result["feature_widths"] = widths
        store.set("trained", pickle.dumps(result))
        _serve_save_requests(store, self.settings, result)
        return result


def _trained_model(settings: TrainSettings, result) -> torch.nn.Module:
    module = copy.deepcopy(settings.model)
    module.load_state_dict(torch.load(io.BytesIO(result["state_dict"]), weights_only=True))
    return module.eval()


def _serve_save_requests(store, settings: TrainSettings, result) -> None:
    """Lazy fits: write the model wherever ``model.save(path)`` was asked before the job ran."""
    count = int(store.add("save_requests", 0))
    for i in range(count):
        request = json.loads(store.get(f"save_request/{i}").decode())
        model = PyTorchModel(_trained_model(settings, result), settings.feature_cols,
                             request["prediction_col"],
                             feature_widths=result["feature_widths"])
        model._feature_types = [DataType.from_name(t) for t in settings.feature_types]
        model.save(request["path"], format=request["format"],
                   overwrite=request["overwrite"])


class _PendingTraining:
    """Connects a PyTorchModel to the training run that will produce its weights."""

    def __init__(self, run, settings: TrainSettings, progress: "_Progress"):
        self.run, self.settings, self.progress = run, settings, progress

    def ready(self) -> bool:
        return self.run.store().check(["trained"])

    def resolve(self, model: PyTorchModel) -> None:
        if not self.ready():
            raise NotFittedError("The model is not trained yet: its training job runs when "
                                 "the StatementSet passed to PyTorchEstimator executes")
        self.apply(model, pickle.loads(self.run.store().get("trained")))

    def request_save(self, model: PyTorchModel, path: str, format: str,
                     overwrite: bool) -> None:
        store = self.run.store()
        index = int(store.add("save_requests", 1)) - 1
        store.set(f"save_request/{index}", json.dumps({
            "path": os.path.abspath(path), "format": format, "overwrite": overwrite,
            "prediction_col": model.get_prediction_col()}))

    def apply(self, model: PyTorchModel, result) -> None:
        model._module = _trained_model(self.settings, result)
        model.set(PyTorchModel.FEATURE_WIDTHS, list(result["feature_widths"]))
        model._history = result["history"]
        model._pending = None


class _Progress:
    """With ``verbose``, polls the run's store for per-epoch records and prints them as they
    arrive (one line per epoch) while the job runs."""

    def __init__(self, store, epochs: int, verbose: bool):
        self.store, self.epochs, self.verbose = store, epochs, verbose
        self._next = 1
        self._stop = threading.Event()
        self._thread = None

    def start(self) -> None:
        if self.verbose:
            self._thread = threading.Thread(target=self._poll, daemon=True,
                                            name="flink-torch-ml-progress")
            self._thread.start()

    def _poll(self) -> None:
        while self._next <= self.epochs:
            if not self._print_available() and self._stop.wait(0.5):
                return

    def _print_available(self) -> bool:
        printed = False
        while self._next <= self.epochs and self.store.check([f"progress/{self._next}"]):
            record = json.loads(self.store.get(f"progress/{self._next}").decode())
            line = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in record.items() if k != "epoch")
            print(f"[flink-torch-ml] epoch {self._next}/{self.epochs}: {line}", flush=True)
            self._next += 1
            printed = True
        return printed

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._print_available()
