"""Optional experiment-tracking callbacks: :class:`TensorBoardLogger` and :class:`MLflowLogger`.

Both write one value per epoch and metric, at step ``epoch + 1`` (so a fit resumed from a
checkpoint continues the same steps), from the epoch logs that the loop has already averaged
over all ranks. Like every callback they run on every rank; only rank 0 writes, so W workers
give one record, not W. Their packages are optional extras (``flink-torch-ml[tensorboard]``,
``flink-torch-ml[mlflow]``): the constructor, which runs in the client, checks that the
package is installed, and rank 0 imports it at ``on_train_begin``; importing
``flink_torch_ml`` imports neither. A logger holds nothing unpicklable until
``on_train_begin`` (the writer or client is dropped when pickled), so it ships inside the
Flink job with cloudpickle.
"""

import atexit
import dataclasses
import importlib.util
import numbers
import os
import tempfile
import threading
import time
from typing import Any, Dict, Optional, Set, Tuple
from urllib.parse import urlparse

from .callbacks import Callback

__all__ = ["TensorBoardLogger", "MLflowLogger"]

#: epoch-log keys that are not metrics: ``epoch`` is the step itself
_NOT_METRICS = frozenset({"epoch", "version"})
#: tracking URIs without a scheme that are not directories
_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})
#: tracking-store schemes that MLflow serves through SQLAlchemy
_DATABASES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})


def _require(module: str, logger: str, extra: str) -> None:
    """Raise the ImportError naming the extra when ``module`` is not installed."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{logger} needs the {extra!r} package: "
                          f"pip install 'flink-torch-ml[{extra}]'", name=module)


def _local(uri: str) -> str:
    """A path without a scheme made absolute in the client: rank 0 runs elsewhere."""
    return uri if urlparse(uri).scheme or uri in _NAMED_STORES else os.path.abspath(uri)


def _is_file_store(uri: str) -> bool:
    """True for a tracking URI that names a local directory (``file://`` or a plain path)."""
    return urlparse(uri).scheme in ("", "file") and uri not in _NAMED_STORES


def _scalars(logs: Dict[str, Any]) -> Dict[str, float]:
    """The numeric values of an epoch's logs (numbers, one-element tensors), as floats;
    strings, lists, None and booleans are left out."""
    values = {}
    for key, value in logs.items():
        if key in _NOT_METRICS or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            values[key] = float(value)
        elif hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
            values[key] = float(value.item())
    return values


class TensorBoardLogger(Callback):
    """Writes every numeric value of the epoch logs (``train_loss``, ``valid_loss``,
    ``train_accuracy``, ``rows_per_second``...) as a TensorBoard scalar tagged
    ``prefix + key``, at step ``epoch + 1``, into ``log_dir`` (rank 0 only; a directory the
    TaskManager running rank 0 can write, e.g. shared storage). The writer is flushed every
    epoch, so what a failed fit logged stays readable; a fit resumed from a checkpoint after
    epoch N purges the events the failed attempt wrote after N (``purge_step``), so each
    step keeps one value."""

    def __init__(self, log_dir: str, prefix: str = ""):
        _require("tensorboard", "TensorBoardLogger", "tensorboard")
        self.log_dir = _local(log_dir)
        self.prefix = prefix
        self.writer: Any = None

    def on_train_begin(self) -> None:
        if self.loop.rank != 0:
            return
        self.on_train_end()  # a writer left open by an earlier fit of this instance that raised
        from torch.utils.tensorboard import SummaryWriter

        start = int(getattr(self.loop, "start_epoch", 0) or 0)
        self.writer = SummaryWriter(self.log_dir, purge_step=start + 1 if start else None)

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        self._write(logs, epoch + 1)

    def on_update_end(self, version: int, logs: Dict[str, Any]) -> None:
        self._write(logs, version)

    def _write(self, logs: Dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in _scalars(logs).items():
            self.writer.add_scalar(self.prefix + key, value, step)
        self.writer.flush()

    def on_train_end(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __getstate__(self):
        state = super().__getstate__()
        state["writer"] = None
        return state


# Runs this process started and has not ended: (tracking URI, run id). The training loop has
# no failure hook, so a fit that raises never reaches on_train_end; these runs are marked
# FAILED when the process exits (best effort: not when the process is killed).
_OPEN_RUNS: Set[Tuple[Optional[str], str]] = set()
_OPEN_RUNS_LOCK = threading.Lock()
_AT_EXIT_REGISTERED = False


def _opened(tracking_uri: Optional[str], run_id: str) -> None:
    global _AT_EXIT_REGISTERED
    with _OPEN_RUNS_LOCK:
        _OPEN_RUNS.add((tracking_uri, run_id))
        if not _AT_EXIT_REGISTERED:
            atexit.register(_fail_open_runs)
            _AT_EXIT_REGISTERED = True


def _closed(tracking_uri: Optional[str], run_id: Optional[str]) -> None:
    if run_id is None:  # the run was never created (on_train_begin raised before): not open
        return
    with _OPEN_RUNS_LOCK:
        _OPEN_RUNS.discard((tracking_uri, run_id))


def _fail_open_runs() -> None:
    """Mark the runs this process left open FAILED (registered with atexit)."""
    with _OPEN_RUNS_LOCK:
        runs = list(_OPEN_RUNS)
        _OPEN_RUNS.clear()
    if not runs:
        return
    from mlflow.tracking import MlflowClient

    for tracking_uri, run_id in runs:
        try:
            MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, "FAILED")
        except Exception:  # noqa: BLE001 - the store may be gone at exit; nothing to do
            pass


class MLflowLogger(Callback):
    """Records the fit as an MLflow run, from rank 0: the scalar training settings as params
    (``max_epochs``, ``batch_size``, ``seed``..., plus ``world_size``, ``model``,
    ``optimizer``, ``lr`` of the first param group, ``loss``), every numeric value of the
    epoch logs as a metric at step ``epoch + 1``, and at the end (``log_model``) the trained
    model saved in the library's format (``model_format``: loadable with
    ``PyTorchModel.load``) as artifacts under ``model/``.

    It uses ``MlflowClient`` rather than mlflow's process-wide active run, so it neither
    needs nor disturbs one. ``tracking_uri`` defaults to the client's
    ``MLFLOW_TRACKING_URI`` (read when the logger is made, since Flink's workers may not
    share that environment), and a plain directory becomes absolute; ``experiment``
    likewise defaults to ``MLFLOW_EXPERIMENT_NAME``, else MLflow's default experiment.
    Without either, MLflow's default store is used, relative to rank 0's working directory
    (a Flink worker's temporary one): give a tracking server or a shared directory. MLflow 3
    refuses file stores (``file:///...`` or a directory) unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: a ``tracking_uri`` naming one turns that on (in the
    client and on rank 0), as does the variable set in the client; its
    default and ``sqlite:///`` stores need SQLAlchemy and Alembic, which mlflow-skinny does
    not install (rank 0 then raises an ImportError saying so).

    After a fit, rank 0's logger holds ``run_id`` (in an in-process ``fit_worker``; in a
    Flink fit rank 0 runs in a worker, so find the run by ``run_name``). The run id is
    checkpointed: a fit resumed from a checkpoint continues the same run (a new one if the
    store does not have it). A fit that raises never reaches ``on_train_end``: its run is
    marked FAILED when the worker process exits, or continued by the resumed fit.
    """

    def __init__(self, tracking_uri: Optional[str] = None, experiment: Optional[str] = None,
                 run_name: Optional[str] = None, log_model: bool = True,
                 model_format: str = "torchscript"):
        _require("mlflow", "MLflowLogger", "mlflow")
        tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.tracking_uri = _local(tracking_uri) if tracking_uri else None
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or None
        self.run_name, self.log_model, self.model_format = run_name, log_model, model_format
        self.allow_file_store = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
        if self.tracking_uri is not None and _is_file_store(self.tracking_uri) \
                and self.allow_file_store is None:
            # A directory or file:// URI given on purpose: MLflow 3 keeps file stores behind
            # this switch. Turn it on here too, so the client can read the run back.
            self.allow_file_store = "true"
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        self.run_id: Optional[str] = None
        self._resumed_run_id: Optional[str] = None
        self._client: Any = None

    # ------------------------------------------------------------------ hooks
    def on_train_begin(self) -> None:
        if self.loop.rank != 0:
            return
        if self._client is not None:  # an earlier fit of this instance raised
            self._client.set_terminated(self.run_id, "FAILED")
            _closed(self.tracking_uri, self.run_id)
        if self.allow_file_store is not None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", self.allow_file_store)
        import mlflow
        from mlflow.tracking import MlflowClient

        uri = self.tracking_uri or mlflow.get_tracking_uri()
        if urlparse(uri).scheme.split("+")[0] in _DATABASES \
                and importlib.util.find_spec("sqlalchemy") is None:
            raise ImportError(f"MLflowLogger: the tracking store {uri!r} is a database, which "
                              f"needs SQLAlchemy and Alembic (mlflow-skinny has neither): pip "
                              f"install sqlalchemy alembic, or pass tracking_uri a server "
                              f"(http://...) or a directory (with MLFLOW_ALLOW_FILE_STORE=true "
                              f"on MLflow 3)", name="sqlalchemy")
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        self.run_id = self._continued_run()
        if self.run_id is None:
            run = self._client.create_run(self._experiment_id(), run_name=self.run_name)
            self.run_id = run.info.run_id
            self._log(params=self.params())
        _opened(self.tracking_uri, self.run_id)

    def on_epoch_end(self, epoch: int, logs: Dict[str, Any]) -> None:
        if self._client is None:
            return
        self._log(metrics=_scalars(logs), step=epoch + 1)

    def on_update_end(self, version: int, logs: Dict[str, Any]) -> None:
        if self._client is None:
            return
        self._log(metrics=_scalars(logs), step=version)

    def on_train_end(self) -> None:
        if self._client is None:
            return
        status = "FAILED"
        try:
            if self.log_model:
                with tempfile.TemporaryDirectory(prefix="flink-torch-ml-mlflow-") as tmp:
                    path = os.path.join(tmp, "model")
                    self.loop.save_model(path, self.model_format)
                    self._client.log_artifacts(self.run_id, path, artifact_path="model")
            status = "FINISHED"
        finally:
            self._client.set_terminated(self.run_id, status)
            _closed(self.tracking_uri, self.run_id)
            self._client = None

    # ------------------------------------------------------------------ helpers
    def params(self) -> Dict[str, Any]:
        """What is logged as params: the settings that are JSON scalars (None left out) and
        the run's shape (world size, model, optimizer, learning rate, loss)."""
        loop = self.loop
        settings = loop.settings
        items = ({f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
                 if dataclasses.is_dataclass(settings) else dict(vars(settings)))
        params = {k: v for k, v in items.items()
                  if isinstance(v, (str, int, float, bool)) and not k.startswith("_")}
        params["world_size"] = loop.world_size
        params["model"] = type(loop.model).__name__
        params["optimizer"] = type(loop.optimizer).__name__
        groups = getattr(loop.optimizer, "param_groups", None) or [{}]
        if "lr" in groups[0]:
            params["lr"] = float(groups[0]["lr"])
        loss = getattr(settings, "loss", None)
        if loss is not None:
            params["loss"] = getattr(loss, "__name__", type(loss).__name__)
        return params

    def _experiment_id(self) -> str:
        if self.experiment is None:
            return "0"  # MLflow's "Default" experiment
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(self.experiment)
        except Exception:  # another fit created it meanwhile
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _continued_run(self) -> Optional[str]:
        """The run of the checkpoint this fit resumes from, reopened, if the store has it."""
        run_id, self._resumed_run_id = self._resumed_run_id, None
        if run_id is None:
            return None
        try:
            self._client.get_run(run_id)
        except Exception:  # noqa: BLE001 - another store, or the run was deleted
            return None
        self._client.update_run(run_id, status="RUNNING")
        return run_id

    def _log(self, metrics: Optional[Dict[str, float]] = None,
             params: Optional[Dict[str, Any]] = None, step: int = 0) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()])

    def state_dict(self) -> Dict[str, Any]:
        return {"run_id": self.run_id} if self.run_id else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._resumed_run_id = state.get("run_id")

    def __getstate__(self):
        state = super().__getstate__()
        state["_client"] = None
        return state

