"""OnlinePyTorchEstimator: FlinkML's online-learning contract for PyTorch models. ``fit`` on
an unbounded table defines a long-running job in which ``worker_num`` ranks update the model
every ``global_batch_size`` rows (or every event-time window of ``window_ms``); the returned
model's ``get_model_data()`` is the unbounded table of versions, and its ``transform`` scores
each row with the newest version.
"""

import copy
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Union, cast

import torch
from pyflink.table import Table

from ._defaults import ONLINE_BUNDLE_TIME_MS, ONLINE_HEARTBEAT_MS
from .api import Estimator
from .core.callbacks import Callback
from .core.engine import TrainingLoop
from .data_types import DataType
from .errors import SchemaError
from .client.schema import checked_columns
from .estimator import PyTorchEstimator, check_training_params, load_estimator, \
    save_estimator
from .model import PyTorchModel
from .params import (HasFeatureCols, HasLabelCol, HasPredictionCol, HasSeed, HasTimeout,
                     HasWorkerNum, IntArrayParam, IntParam, ObjectParam, ParamValidators,
                     StringParam)
from .client.job import check_environment, use_process_workers
from .client.online_fit import OnlineFit
from .client.online_job import rowtime_field
from .core.online import OnlineSpec
from .core.engine import resolve_metrics
from .core.spec import spec_for_module

__all__ = ["OnlinePyTorchEstimator"]

class OnlinePyTorchEstimator(Estimator, HasFeatureCols, HasLabelCol, HasPredictionCol,
                             HasWorkerNum, HasSeed, HasTimeout):
    """Trains ``model`` continuously on an unbounded table (FlinkML's ``OnlineX`` estimators,
    for deep learning): every ``global_batch_size`` rows (split across ``worker_num`` ranks)
    make one optimizer step and one new model version; or, with ``window_ms``, the rows of
    each event-time tumbling window (the table needs a time attribute).

    Each update runs the same ``TrainingLoop`` steps as a batch fit: a ``training_loop``
    subclass's ``train_step`` and ``callbacks`` apply (``on_update_end(version, logs)`` per
    version; ``TensorBoardLogger``/``MLflowLogger`` record each version), and ``metrics`` are
    computed on each update's rows before it trains on them (prequential).

    ``fit(table)`` returns a PyTorchModel whose ``get_model_data()`` is the unbounded table
    ``(modelVersion BIGINT, versionTime BIGINT (ms), format STRING, model BYTES, spec STRING,
    rowsTrained BIGINT, loss DOUBLE)`` and whose ``transform`` scores each row with the
    newest version. Nothing runs until a pipeline using them executes."""

    MODEL = PyTorchEstimator.MODEL
    LOSS = PyTorchEstimator.LOSS
    OPTIMIZER_CREATOR = PyTorchEstimator.OPTIMIZER_CREATOR
    METRICS = PyTorchEstimator.METRICS
    CALLBACKS = PyTorchEstimator.CALLBACKS
    TRAINING_LOOP = PyTorchEstimator.TRAINING_LOOP
    GLOBAL_BATCH_SIZE = IntParam(
        "global_batch_size", "Rows per model update, across all workers.", None,
        ParamValidators.optional(ParamValidators.gt(0)))
    WINDOW_MS = IntParam(
        "window_ms", "Event-time tumbling windows of this many ms instead of "
        "global_batch_size: each window's rows make one update (FlinkML's windows param).",
        None, ParamValidators.optional(ParamValidators.gt(0)))
    MODEL_VERSION_COL = StringParam("model_version_col", "The model data's version column.",
                                    "modelVersion")
    INITIAL_MODEL = ObjectParam(
        "initial_model", "A PyTorchModel or the path of a saved one: its weights start the "
        "training (published as version 0).")
    FEATURE_WIDTHS = IntArrayParam(
        "feature_widths", "Array length of each feature column (1 for scalars); needed for "
        "array features.", None)

    def __init__(self, model: Optional[torch.nn.Module] = None,
                 loss: Optional[Callable] = None, optimizer_creator: Optional[Callable] = None,
                 *, feature_cols: Union[None, str, Sequence[str]] = None,
                 label_col: Optional[str] = None, prediction_col: str = "prediction",
                 global_batch_size: Optional[int] = None, window_ms: Optional[int] = None,
                 model_version_col: str = "modelVersion",
                 initial_model: Union[None, PyTorchModel, str] = None, worker_num: int = 1,
                 feature_widths: Optional[Sequence[int]] = None, seed: int = 0,
                 timeout: float = cast(float, HasTimeout.TIMEOUT.default_value),
                 metrics: Union[None, Sequence[str], Dict[str, Callable]] = None,
                 callbacks: Optional[Sequence[Callback]] = None,
                 training_loop: Optional[TrainingLoop] = None, **misspelt: Any):
        self._reject_unknown(misspelt)
        self._init_params(model=model, loss=loss, optimizer_creator=optimizer_creator,
                          feature_cols=feature_cols, label_col=label_col,
                          prediction_col=prediction_col, global_batch_size=global_batch_size,
                          window_ms=window_ms, model_version_col=model_version_col,
                          initial_model=initial_model,
                          worker_num=worker_num, feature_widths=feature_widths, seed=seed,
                          timeout=timeout, metrics=metrics,
                          callbacks=list(callbacks) if callbacks is not None else None,
                          training_loop=training_loop)

    def get_global_batch_size(self) -> Optional[int]:
        return self.get(self.GLOBAL_BATCH_SIZE)

    def set_global_batch_size(self, value: int) -> "OnlinePyTorchEstimator":
        return self.set(self.GLOBAL_BATCH_SIZE, value)

    def get_window_ms(self) -> Optional[int]:
        return self.get(self.WINDOW_MS)

    def set_window_ms(self, value: int) -> "OnlinePyTorchEstimator":
        return self.set(self.WINDOW_MS, value)

    def get_model_version_col(self) -> str:
        return self.get(self.MODEL_VERSION_COL)

    def set_model_version_col(self, value: str) -> "OnlinePyTorchEstimator":
        return self.set(self.MODEL_VERSION_COL, value)

    def get_initial_model(self) -> Union[None, PyTorchModel, str]:
        return self.get(self.INITIAL_MODEL)

    def set_initial_model(self, value: Union[PyTorchModel, str]) -> "OnlinePyTorchEstimator":
        return self.set(self.INITIAL_MODEL, value)

    # ------------------------------------------------------------------ fit
    def fit(self, *inputs: Table) -> PyTorchModel:
        """Define the online training job on ``inputs[0]`` (unbounded or bounded: a bounded
        table trains to its end and publishes a last version over the remaining rows).

        Changes to the table environment's configuration (its jobs need them): Python
        functions run in worker processes (``python.loopback-server.address`` removed;
        the process environment variable ``_python_worker_execution_mode=process`` set unless
        set), and where unset ``python.executable`` (this interpreter) and
        ``python.fn-execution.bundle.time`` (100 ms: a version leaves a rank when its
        bundle ends)."""
        if len(inputs) != 1:
            raise ValueError(f"fit takes exactly one table, got {len(inputs)}")
        table = inputs[0]
        if not isinstance(table, Table):
            raise TypeError(f"fit takes a pyflink Table, got {type(table).__name__}")
        model, loss, creator = self._check_settings()
        t_env = table._t_env
        world = self.get_worker_num()
        check_environment(t_env, world)
        use_process_workers(t_env)
        config = t_env.get_config()
        if config.get("python.fn-execution.bundle.time", None) is None:
            # a version row leaves the trainer when its bundle ends: Flink's default (1 s)
            # would add up to a second to every version's lag
            config.set("python.fn-execution.bundle.time", str(ONLINE_BUNDLE_TIME_MS))
        features, label_col = self.get_feature_cols(), self.get_label_col()
        assert features is not None and label_col is not None  # check_training_params
        feature_cols = list(features)
        feature_types, label_type = self._column_types(table, feature_cols, label_col)
        if self.get_window_ms() is not None and rowtime_field(table) is None:
            raise SchemaError("window_ms needs event time, and the input table has no time "
                              "attribute: declare one in its DDL (WATERMARK FOR ts AS ...), "
                              "or use global_batch_size")
        model = copy.deepcopy(model)
        initial = self.get(self.INITIAL_MODEL)
        if initial is not None:
            _warm_start(model, initial, t_env)
        widths = self._widths(feature_types)
        spec = spec_for_module(model, feature_cols, feature_types, widths,
                               self.get_prediction_col())
        spec_json = dict(spec.to_json(), input_names=spec.feature_cols)
        run = OnlineFit(t_env, self.get_timeout())
        online = OnlineSpec(
            model=model, loss=loss, optimizer_creator=creator, feature_cols=feature_cols,
            feature_types=[t.type_name for t in feature_types], label_col=label_col,
            label_type=label_type.type_name, global_batch_size=self.get_global_batch_size(),
            world_size=world, rendezvous=run.rendezvous, timeout=self.get_timeout(),
            heartbeat_ms=ONLINE_HEARTBEAT_MS, model_spec=spec_json,
            emit_initial=initial is not None, seed=self.get_seed(),
            window_ms=self.get_window_ms(), feature_widths=widths,
            metrics=resolve_metrics(self.get(self.METRICS)),
            callbacks=list(self.get(self.CALLBACKS) or []), loop=self.get(self.TRAINING_LOOP),
            client_pid=os.getpid())
        versions = run.model_data(table, online, self.get_model_version_col())
        return PyTorchModel._following(versions, copy.deepcopy(model), spec, keep_alive=run,
                                       feature_widths=widths,
                                       model_version_col=self.get_model_version_col())

    def _check_settings(self):
        model, loss, creator = check_training_params(self)
        batch, window = self.get_global_batch_size(), self.get_window_ms()
        if batch is not None and window is not None:
            raise ValueError("Set global_batch_size or window_ms, not both: an update takes "
                             "either a number of rows or an event-time window's rows")
        if window is not None:
            return model, loss, creator
        if batch is None:
            raise ValueError("global_batch_size is required (or window_ms): the rows of one "
                             "model update, across all workers (FlinkML's globalBatchSize)")
        if batch < self.get_worker_num():
            raise ValueError(f"global_batch_size={batch} is smaller than worker_num="
                             f"{self.get_worker_num()}: every worker needs at least one row "
                             f"of each update; raise global_batch_size or lower worker_num")
        return model, loss, creator

    def _column_types(self, table: Table, feature_cols: List[str], label_col: str):
        feature_types, label_type, _ = checked_columns(
            table, feature_cols, label_col,
            outputs=[(self.get_model_version_col(), "model_version_col")])
        return feature_types, label_type

    def _widths(self, feature_types: List[DataType]) -> List[int]:
        widths = self.get(self.FEATURE_WIDTHS)
        if widths is None:
            feature_cols = self.get_feature_cols()
            assert feature_cols is not None  # fit checked the params first
            arrays = [c for c, t in zip(feature_cols, feature_types) if t.is_array]
            if arrays:
                raise SchemaError(f"Array feature column(s) {', '.join(arrays)}: set "
                                  f"feature_widths=[...] (their lengths; 1 for scalars)")
            return [1] * len(feature_types)
        if len(widths) != len(feature_types):
            raise SchemaError(f"feature_widths has {len(widths)} entries but feature_cols has "
                              f"{len(feature_types)}")
        return list(widths)

    # ------------------------------------------------------------------ save / load
    def save(self, path: str) -> None:
        """Save the parameters (JSON) and the model and callables (cloudpickle: loading them
        runs code, so load estimators only from trusted paths); an ``initial_model`` given as
        a PyTorchModel is saved beside them in the library's model format."""
        initial = self.get_initial_model()
        objects = {}
        if isinstance(initial, PyTorchModel):
            initial.save(os.path.join(path, _INITIAL_MODEL_DIR))
            objects[self.INITIAL_MODEL.name] = _SavedBeside(_INITIAL_MODEL_DIR)
        save_estimator(self, path, objects)

    @classmethod
    def load(cls, t_env, path: str) -> "OnlinePyTorchEstimator":
        estimator = load_estimator(cls, path)
        initial = estimator.get_initial_model()
        if isinstance(initial, _SavedBeside):
            # beside the estimator, whose own loading already trusts the path
            beside = os.path.join(path, initial.name)
            estimator.set_initial_model(PyTorchModel.load(t_env, beside, trusted=True))
        return estimator


_INITIAL_MODEL_DIR = "initial_model"


class _SavedBeside:
    """In a saved estimator: "the initial model is the saved model in this subdirectory"."""

    def __init__(self, name: str):
        self.name = name


def _warm_start(model: torch.nn.Module, initial: Union[PyTorchModel, str], t_env) -> None:
    """Copy the initial model's weights into ``model`` (same parameter names and shapes)."""
    if isinstance(initial, str):
        initial = PyTorchModel.load(t_env, initial)
    if not isinstance(initial, PyTorchModel):
        raise TypeError(f"initial_model must be a PyTorchModel or the path of a saved one, "
                        f"got {type(initial).__name__}")
    source = initial.model
    if source is None:
        raise ValueError("initial_model holds an ONNX model, whose weights cannot start "
                         "PyTorch training; save the initial model as TorchScript")
    try:
        model.load_state_dict(source.state_dict())
    except RuntimeError as error:
        raise ValueError(f"initial_model's weights do not fit the model to train: "
                         f"{error}") from None
