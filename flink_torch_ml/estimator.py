"""PyTorchEstimator: a FlinkML-style Estimator whose ``fit`` trains a model with data-parallel
PyTorch inside a Flink job and returns a PyTorchModel. The user never writes a training loop.
"""

import json
import os
import pickle
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import torch
from pyflink.table import StatementSet, Table
from pyflink.table.expressions import col

from .api import Estimator, write_flinkml_metadata
from .client.fit import BatchFit, ResumeSettings
from .client.schema import checked_columns
from .core.callbacks import Callback, LRScheduler
from .core.checkpoint import check_compatible, ensure_writable, find_checkpoints, \
    newest_checkpoint
from .core.engine import BUILTIN_METRICS, TrainingLoop, TrainSettings, resolve_metrics
from .data_types import DataType
from .errors import CheckpointError, ConfigurationError, UnsupportedTypeError
from .model import PyTorchModel
from .params import (BooleanParam, HasBatchSize, HasFeatureCols, HasLabelCol, HasMaxEpochs,
                     HasPredictionCol, HasSeed, HasTimeout, HasWorkerNum, IntParam, ObjectParam,
                     ParamValidator, ParamValidators, StringParam)

__all__ = ["PyTorchEstimator", "check_training_params", "save_estimator", "load_estimator"]

def check_training_params(stage) -> Tuple[torch.nn.Module, Callable, Callable]:
    """What every estimator needs before it reads a table: a module, a loss, an optimizer
    creator, feature and label columns. One ConfigurationError lists every problem."""
    problems = []
    model, loss = stage.get(stage.MODEL), stage.get(stage.LOSS)
    optimizer_creator = stage.get(stage.OPTIMIZER_CREATOR)
    if not isinstance(model, torch.nn.Module):
        problems.append(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss):
        problems.append("loss must be callable, e.g. torch.nn.MSELoss()")
    if not callable(optimizer_creator):
        problems.append("optimizer_creator must be a callable taking the model and "
                        "returning an optimizer")
    if not stage.get(stage.FEATURE_COLS):
        problems.append("feature_cols is not set: name the input columns in the order "
                        "forward() takes them")
    if not stage.get(stage.LABEL_COL):
        problems.append("label_col is not set: name the column holding the label")
    if problems:
        raise ConfigurationError(f"{type(stage).__name__} is not configured: "
                                 + "; ".join(problems))
    return model, loss, optimizer_creator


def _is_validation(value) -> bool:
    if value is None or isinstance(value, str):
        return True
    return isinstance(value, float) and 0.0 < value < 1.0


def _is_callbacks(value) -> bool:
    return value is None or (isinstance(value, (list, tuple))
                             and all(isinstance(c, Callback) for c in value))


def _is_metrics(value) -> bool:
    if value is None:
        return True
    items = value.items() if isinstance(value, dict) else [(v, v) for v in value]
    return all((isinstance(k, str) and (callable(m) or m in BUILTIN_METRICS)) for k, m in items)


class PyTorchEstimator(Estimator, HasFeatureCols, HasLabelCol, HasPredictionCol, HasMaxEpochs,
                       HasBatchSize, HasWorkerNum, HasSeed, HasTimeout):
    """Trains ``model`` on a Flink table with ``worker_num`` DistributedDataParallel workers.

    ``PyTorchEstimator(model, loss, optimizer_creator, feature_cols=[...], label_col="y",
    max_epochs=5, batch_size=128, worker_num=2)``; ``fit(table)`` returns a trained
    PyTorchModel. Passing a StatementSet (``statement_set=...``, or first, as in
    DL-on-Flink: ``PyTorchEstimator(statement_set, model, loss, optimizer_creator, ...)``)
    makes ``fit`` lazy: the job is added to the set, and the returned model gets its weights
    when the set executes.
    """

    MODEL = ObjectParam("model", "The torch.nn.Module to train.")
    LOSS = ObjectParam("loss", "loss(prediction, label) -> scalar tensor, e.g. nn.MSELoss().")
    OPTIMIZER_CREATOR = ObjectParam("optimizer_creator",
                                    "Callable[[nn.Module], torch.optim.Optimizer].")
    LR_SCHEDULER_CREATOR = ObjectParam(
        "lr_scheduler_creator", "Callable[[Optimizer], LRScheduler], stepped once per epoch.")
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
    CALLBACKS = ObjectParam(
        "callbacks", "Callbacks run on every rank (EarlyStopping, ModelCheckpoint, your own "
        "Callback subclasses).", None, ParamValidator(_is_callbacks, "a list of Callbacks"))
    TRAINING_LOOP = ObjectParam(
        "training_loop", "A TrainingLoop (subclass) instance whose steps train the model.",
        None, ParamValidator(lambda v: v is None or isinstance(v, TrainingLoop),
                             "a TrainingLoop instance"))
    CHECKPOINT_DIR = StringParam(
        "checkpoint_dir", "Directory for training checkpoints (one every TaskManager reaches "
        "at the same path on a cluster).", None)
    CHECKPOINT_EVERY = IntParam("checkpoint_every", "Epochs between checkpoints.", 1,
                                ParamValidators.gt(0))
    KEEP_CHECKPOINTS = IntParam("keep_checkpoints", "Newest checkpoints kept.", 3,
                                ParamValidators.gt(0))
    MAX_FAILURES = IntParam(
        "max_failures", "New attempts after a lost worker, host or TaskManager (each resumes "
        "from the newest checkpoint); 0 fails at once.", 0, ParamValidators.gt_eq(0))
    RESUME_FROM = StringParam(
        "resume_from", "A checkpoint directory of an earlier fit to continue.", None)

    def __init__(self, model: Union[torch.nn.Module, StatementSet, None] = None,
                 loss: Optional[Callable] = None, optimizer_creator: Optional[Callable] = None,
                 seed_form_optimizer_creator: Optional[Callable] = None, *,
                 feature_cols: Union[None, str, Sequence[str]] = None,
                 label_col: Optional[str] = None, prediction_col: str = "prediction",
                 max_epochs: int = 1, batch_size: int = 32, worker_num: int = 1,
                 lr_scheduler_creator: Optional[Callable] = None, seed: int = 0,
                 shuffle: bool = True, validation: Union[None, float, str] = None,
                 metrics: Union[None, Sequence[str], Dict[str, Callable]] = None,
                 verbose: bool = False,
                 timeout: float = cast(float, HasTimeout.TIMEOUT.default_value),
                 callbacks: Optional[Sequence[Callback]] = None,
                 training_loop: Optional[TrainingLoop] = None,
                 checkpoint_dir: Optional[str] = None, checkpoint_every: int = 1,
                 keep_checkpoints: int = 3, max_failures: int = 0,
                 resume_from: Optional[str] = None,
                 statement_set: Optional[StatementSet] = None, **misspelt: Any):
        self._reject_unknown(misspelt)
        if isinstance(model, StatementSet):  # DL-on-Flink's order: the set comes first
            if statement_set is not None:
                raise TypeError("PyTorchEstimator got statement_set twice")
            statement_set, model, loss, optimizer_creator = \
                model, loss, optimizer_creator, seed_form_optimizer_creator
        elif seed_form_optimizer_creator is not None:
            raise TypeError("PyTorchEstimator takes (model, loss, optimizer_creator) "
                            "positionally, or (statement_set, model, loss, optimizer_creator) "
                            "as in DL-on-Flink; pass the rest by name")
        if statement_set is not None and not isinstance(statement_set, StatementSet):
            raise TypeError(f"statement_set must be a pyflink StatementSet, got "
                            f"{type(statement_set).__name__}")
        self._init_params(
            model=model, loss=loss, optimizer_creator=optimizer_creator,
            feature_cols=feature_cols, label_col=label_col, prediction_col=prediction_col,
            max_epochs=max_epochs, batch_size=batch_size, worker_num=worker_num,
            lr_scheduler_creator=lr_scheduler_creator, seed=seed, shuffle=shuffle,
            validation=validation, metrics=metrics, verbose=verbose, timeout=timeout,
            callbacks=list(callbacks) if callbacks is not None else None,
            training_loop=training_loop, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
            max_failures=max_failures, resume_from=resume_from)
        self._statement_set = statement_set

    # ------------------------------------------------------------------ accessors
    def get_model(self) -> Optional[torch.nn.Module]:
        return self.get(self.MODEL)

    def set_model(self, value: torch.nn.Module) -> "PyTorchEstimator":
        return self.set(self.MODEL, value)

    def get_loss(self) -> Optional[Callable]:
        return self.get(self.LOSS)

    def set_loss(self, value: Callable) -> "PyTorchEstimator":
        return self.set(self.LOSS, value)

    def get_optimizer_creator(self) -> Optional[Callable]:
        return self.get(self.OPTIMIZER_CREATOR)

    def set_optimizer_creator(self, value: Callable) -> "PyTorchEstimator":
        return self.set(self.OPTIMIZER_CREATOR, value)

    def get_lr_scheduler_creator(self) -> Optional[Callable]:
        return self.get(self.LR_SCHEDULER_CREATOR)

    def set_lr_scheduler_creator(self, value: Optional[Callable]) -> "PyTorchEstimator":
        return self.set(self.LR_SCHEDULER_CREATOR, value)

    def get_shuffle(self) -> bool:
        return self.get(self.SHUFFLE)

    def set_shuffle(self, value: bool) -> "PyTorchEstimator":
        return self.set(self.SHUFFLE, value)

    def get_validation(self) -> Union[None, float, str]:
        return self.get(self.VALIDATION)

    def set_validation(self, value: Union[None, float, str]) -> "PyTorchEstimator":
        return self.set(self.VALIDATION, value)

    def get_metrics(self):
        return self.get(self.METRICS)

    def set_metrics(self, value) -> "PyTorchEstimator":
        return self.set(self.METRICS, value)

    def get_verbose(self) -> bool:
        return self.get(self.VERBOSE)

    def set_verbose(self, value: bool) -> "PyTorchEstimator":
        return self.set(self.VERBOSE, value)

    def get_callbacks(self) -> Optional[List[Callback]]:
        return self.get(self.CALLBACKS)

    def set_callbacks(self, value: Sequence[Callback]) -> "PyTorchEstimator":
        return self.set(self.CALLBACKS, list(value))

    def get_training_loop(self) -> Optional[TrainingLoop]:
        return self.get(self.TRAINING_LOOP)

    def set_training_loop(self, value: TrainingLoop) -> "PyTorchEstimator":
        return self.set(self.TRAINING_LOOP, value)

    def get_checkpoint_dir(self) -> Optional[str]:
        return self.get(self.CHECKPOINT_DIR)

    def set_checkpoint_dir(self, value: Optional[str]) -> "PyTorchEstimator":
        return self.set(self.CHECKPOINT_DIR, value)

    def get_checkpoint_every(self) -> int:
        return self.get(self.CHECKPOINT_EVERY)

    def set_checkpoint_every(self, value: int) -> "PyTorchEstimator":
        return self.set(self.CHECKPOINT_EVERY, value)

    def get_keep_checkpoints(self) -> int:
        return self.get(self.KEEP_CHECKPOINTS)

    def set_keep_checkpoints(self, value: int) -> "PyTorchEstimator":
        return self.set(self.KEEP_CHECKPOINTS, value)

    def get_max_failures(self) -> int:
        return self.get(self.MAX_FAILURES)

    def set_max_failures(self, value: int) -> "PyTorchEstimator":
        return self.set(self.MAX_FAILURES, value)

    def get_resume_from(self) -> Optional[str]:
        return self.get(self.RESUME_FROM)

    def set_resume_from(self, value: Optional[str]) -> "PyTorchEstimator":
        return self.set(self.RESUME_FROM, value)

    # ------------------------------------------------------------------ fit
    def fit(self, *inputs: Table) -> PyTorchModel:
        """Train on ``inputs[0]`` inside a Flink job; return the trained PyTorchModel.

        Changes to the table environment's configuration (its jobs need them): Python
        functions run in worker processes (``python.loopback-server.address`` removed;
        the process environment variable ``_python_worker_execution_mode=process`` set unless
        set),
        ``parallelism.default`` = ``worker_num`` (restored after a fit that runs now),
        ``pipeline.max-parallelism`` = 128, and where unset ``python.executable`` (this
        interpreter), ``slot.request.timeout`` (the timeout) and
        ``python.fn-execution.arrow.batch.size``/``bundle.size`` (10,000).
        """
        if len(inputs) != 1:
            raise ValueError(f"fit takes exactly one table, got {len(inputs)}")
        table = inputs[0]
        if not isinstance(table, Table):
            raise TypeError(f"fit expects a pyflink Table, got {type(table).__name__}")
        settings, select = self._settings(table)
        resume = self._prepare_checkpoints(settings)
        if self._statement_set is not None and self.get_max_failures():
            raise ValueError("max_failures needs fit to run the job itself: a fit added to a "
                             "StatementSet runs when the set executes, where it cannot be "
                             "resubmitted; drop statement_set or set max_failures=0")
        fit = BatchFit(table.select(*[col(c) for c in select]), settings,
                       self.get_worker_num(), self.get_timeout(), self.get_verbose(),
                       self.get_max_failures(), resume)
        model = PyTorchModel._from_fit(
            fit, settings.feature_cols, [DataType.from_name(t) for t in settings.feature_types],
            self.get_prediction_col(), table._t_env)
        if self._statement_set is not None:
            fit.run_in(self._statement_set)
        else:
            fit.run_now()
        return model

    def _settings(self, table: Table):
        """Validate params against the table; the settings shipped to the workers."""
        model, loss, optimizer_creator = check_training_params(self)
        features, label = self.get(self.FEATURE_COLS), self.get(self.LABEL_COL)
        validation = self.get(self.VALIDATION)
        extra = [validation] if isinstance(validation, str) else []
        data_types, label_type, types = checked_columns(table, features, label, extra)
        assert label_type is not None  # check_training_params refused a missing label_col
        wanted = list(features) + [label] + extra
        feature_types = [t.type_name for t in data_types]
        if isinstance(validation, str):
            from pyflink.table.types import BooleanType
            if not isinstance(types[validation], BooleanType):
                raise UnsupportedTypeError(f"Validation column {validation!r} must be BOOLEAN")
        metrics = resolve_metrics(self.get(self.METRICS))
        callbacks = list(self.get_callbacks() or [])
        lr_scheduler_creator = self.get_lr_scheduler_creator()
        if lr_scheduler_creator is not None:
            callbacks.append(LRScheduler(lr_scheduler_creator))
        settings = TrainSettings(
            model=model, loss=loss, optimizer_creator=optimizer_creator,
            feature_cols=list(features), feature_types=feature_types, label_col=label,
            label_type=label_type.type_name, max_epochs=self.get(self.MAX_EPOCHS),
            batch_size=self.get(self.BATCH_SIZE), seed=self.get(self.SEED),
            shuffle=self.get(self.SHUFFLE), validation=validation, metrics=metrics,
            callbacks=callbacks, loop=self.get_training_loop(),
            checkpoint_dir=self.get_checkpoint_dir() or self.get_resume_from(),
            checkpoint_every=self.get_checkpoint_every(),
            keep_checkpoints=self.get_keep_checkpoints())
        return settings, wanted

    def _prepare_checkpoints(self, settings: TrainSettings) -> ResumeSettings:
        """Before submission: the checkpoint directory can be written and holds no other
        fit's checkpoints; ``resume_from`` holds an intact checkpoint of this model."""
        resume_from = self.get_resume_from()
        directory = settings.checkpoint_dir
        if resume_from is not None:
            checkpoint, skipped = newest_checkpoint(resume_from)
            if checkpoint is None:
                raise CheckpointError(f"resume_from={resume_from!r} holds no intact checkpoint"
                                      + (f" ({'; '.join(skipped)})" if skipped else ""))
            check_compatible(checkpoint, settings.model)
        if directory is not None:
            ensure_writable(directory)
            if resume_from is None and find_checkpoints(directory):
                raise CheckpointError(
                    f"checkpoint_dir {directory!r} already holds checkpoints of an earlier fit;"
                    f" pass resume_from={directory!r} to continue that fit, or choose an empty "
                    f"directory")
        return ResumeSettings(resume_from, directory)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str) -> None:
        """Save the parameters (JSON) and the model and callables (cloudpickle: loading them
        runs code, so load estimators only from trusted paths)."""
        save_estimator(self, path)

    @classmethod
    def load(cls, t_env, path: str) -> "PyTorchEstimator":
        return load_estimator(cls, path)


def save_estimator(estimator, path: str, objects: Optional[Dict[str, Any]] = None) -> None:
    """An estimator's parameters as JSON and its Python objects (model, callables) with
    cloudpickle, plus FlinkML's metadata file; ``objects`` overrides what is pickled."""
    import cloudpickle

    os.makedirs(path, exist_ok=True)
    simple: Dict[str, Any] = {}
    pickled: Dict[str, Any] = {}
    for param, value in estimator.get_param_map().items():
        (pickled if isinstance(param, ObjectParam) else simple)[param.name] = value
    pickled.update(objects or {})
    with open(os.path.join(path, "estimator.json"), "w") as f:
        json.dump({"class": type(estimator).__name__, "params": simple}, f, indent=2)
    with open(os.path.join(path, "objects.pkl"), "wb") as f:
        cloudpickle.dump(pickled, f)
    write_flinkml_metadata(estimator, path)


def load_estimator(cls, path: str):
    """What ``save_estimator`` wrote, as a new ``cls`` (runs pickled code: trusted paths)."""
    with open(os.path.join(path, "estimator.json")) as f:
        params = json.load(f)["params"]
    with open(os.path.join(path, "objects.pkl"), "rb") as f:
        objects = pickle.load(f)
    estimator = cls()
    for name, value in {**params, **objects}.items():
        estimator.set(estimator._param_by_name(name), value)
    return estimator
