"""TensorBoardLogger and MLflowLogger (core/loggers.py) without Flink: fits of one
in-process worker, read back with TensorBoard's EventAccumulator and MlflowClient."""

import copy
import os
import subprocess
import sys
import types

import cloudpickle
import numpy as np
import pytest
import torch
from torch import nn

from flink_torch_ml import MLflowLogger, TensorBoardLogger
from flink_torch_ml.core import loggers
from flink_torch_ml.core.checkpoint import newest_checkpoint
from flink_torch_ml.worker.estimator_entry import _save
from flink_torch_ml.core.engine import TrainSettings, fit_worker
from flink_torch_ml.core.serialization import read_model_dir
from tests.models import ScalarRegressor
from tests.unit.test_training_loop import FailAt

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def mae(prediction, target):
    return (prediction.reshape(target.shape) - target).abs().mean()


def settings(callbacks, **overrides):
    torch.manual_seed(0)
    values = dict(model=ScalarRegressor(), loss=nn.MSELoss(), optimizer_creator=sgd,
                  feature_cols=["a", "b"], feature_types=["FLOAT_32", "FLOAT_64"],
                  label_col="y", label_type="FLOAT_64", max_epochs=3, batch_size=16, seed=3,
                  validation=0.25, metrics={"mae": mae}, callbacks=callbacks)
    values.update(overrides)
    return TrainSettings(**values)


def data(rows=200):
    x = np.random.default_rng(0).uniform(-1, 1, size=(rows, 2))
    return [x[:, 0].astype(np.float32), x[:, 1], 3 * x[:, 0] - 2 * x[:, 1] + 0.5]


def saver(train_settings):
    """What the estimator's entry hands fit_worker: save the model in the library's format."""
    def save_model(path, model_format):
        _save(copy.deepcopy(train_settings.model), train_settings, [1, 1], path, model_format,
              {})
    return save_model


def numeric(record):
    return {k: v for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


# ---------------------------------------------------------------------- TensorBoard
def test_tensorboard_writes_one_scalar_per_epoch_and_numeric_log(tmp_path):
    logger = TensorBoardLogger(str(tmp_path / "tb"), prefix="fit/")
    result = fit_worker(0, 1, data(), settings([logger]))
    history = result["history"]
    written = scalars(tmp_path / "tb")
    assert set(written) == {"fit/" + k for k in numeric(history[0])}
    assert {"fit/train_loss", "fit/valid_loss", "fit/train_mae", "fit/valid_mae"} <= set(written)
    for tag, points in written.items():
        expected = [(h["epoch"], h[tag[len("fit/"):]]) for h in history]
        assert [s for s, _ in points] == [s for s, _ in expected] == [1, 2, 3]
        assert [v for _, v in points] == pytest.approx([v for _, v in expected], rel=1e-6)
    assert logger.writer is None  # closed at on_train_end


def test_tensorboard_after_a_resume_keeps_epoch_steps_one_value_each(tmp_path):
    log_dir, checkpoints = str(tmp_path / "tb"), str(tmp_path / "ckpt")
    with pytest.raises(RuntimeError, match="worker lost"):  # epochs 1-3 logged, checkpoint 2
        fit_worker(0, 1, data(), settings([TensorBoardLogger(log_dir), FailAt(3)],
                                          max_epochs=5, checkpoint_dir=checkpoints,
                                          checkpoint_every=2))
    checkpoint, _ = newest_checkpoint(checkpoints)
    assert checkpoint.epoch == 2
    resumed = fit_worker(0, 1, data(), settings([TensorBoardLogger(log_dir)], max_epochs=5,
                                                checkpoint_dir=checkpoints),
                         attempt=1, resume_from=checkpoint)
    assert resumed["start_epoch"] == 2
    points = scalars(log_dir)["train_loss"]
    assert [s for s, _ in points] == [1, 2, 3, 4, 5]  # the failed attempt's step 3 is purged
    assert [v for _, v in points] == pytest.approx(
        [h["train_loss"] for h in resumed["history"]], rel=1e-6)


# ---------------------------------------------------------------------- MLflow
@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A temporary local file store; MLflow 3 refuses file stores without this opt-in."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def test_mlflow_logs_params_metrics_per_epoch_and_the_model(tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger(tracking_uri, experiment="flink-torch-ml", run_name="unit")
    train_settings = settings([logger])
    result = fit_worker(0, 1, data(), train_settings, save_model=saver(train_settings))
    client = MlflowClient(tracking_uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "unit"
    assert client.get_experiment(run.info.experiment_id).name == "flink-torch-ml"
    params = run.data.params
    assert {k: params[k] for k in ("max_epochs", "batch_size", "seed", "validation",
                                   "world_size", "optimizer", "lr", "model", "loss")} == {
        "max_epochs": "3", "batch_size": "16", "seed": "3", "validation": "0.25",
        "world_size": "1", "optimizer": "SGD", "lr": "0.1", "model": "ScalarRegressor",
        "loss": "MSELoss"}
    assert "feature_cols" not in params and "checkpoint_dir" not in params  # list, None
    history = result["history"]
    assert set(run.data.metrics) == set(numeric(history[0]))
    for key in ("train_loss", "valid_loss", "valid_mae", "train_rows"):
        points = sorted((m.step, m.value) for m in client.get_metric_history(logger.run_id, key))
        assert points == [(h["epoch"], pytest.approx(h[key])) for h in history]
    saved = [f.path for f in client.list_artifacts(logger.run_id, "model")]
    local = tmp_path / "direct"
    saver(train_settings)(str(local), "torchscript")
    assert sorted(saved) == sorted("model/" + name for name in os.listdir(local))
    downloaded = client.download_artifacts(logger.run_id, "model", str(tmp_path / "down"))
    assert read_model_dir(downloaded).model_format == "torchscript"


@pytest.mark.parametrize("as_uri", [True, False])
def test_mlflow_a_file_store_named_by_the_user_works_without_the_opt_in(tmp_path, monkeypatch,
                                                                         as_uri):
    """MLflow 3 refuses file stores unless MLFLOW_ALLOW_FILE_STORE=true; a tracking_uri that
    names a directory (or file://) is that choice made explicitly, so the logger opts in."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = tmp_path / "mlruns"
    logger = MLflowLogger(store.as_uri() if as_uri else str(store), log_model=False)
    fit_worker(0, 1, data(), settings([logger]))
    run = MlflowClient(store.as_uri()).get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert len(MlflowClient(store.as_uri()).get_metric_history(logger.run_id,
                                                               "train_loss")) == 3


def test_mlflow_a_resumed_fit_continues_the_run_and_a_failed_one_is_marked_failed(
        tmp_path, tracking_uri):
    from mlflow.tracking import MlflowClient

    client, checkpoints = MlflowClient(tracking_uri), str(tmp_path / "ckpt")
    first = MLflowLogger(tracking_uri, log_model=False)
    with pytest.raises(RuntimeError, match="worker lost"):
        fit_worker(0, 1, data(), settings([first, FailAt(2)], max_epochs=4,
                                          checkpoint_dir=checkpoints))
    assert client.get_run(first.run_id).info.status == "RUNNING"  # no failure hook
    second = MLflowLogger(tracking_uri, log_model=False)
    resumed = fit_worker(0, 1, data(), settings([second], max_epochs=4,
                                                checkpoint_dir=checkpoints),
                         attempt=1, resume_from=newest_checkpoint(checkpoints)[0])
    assert second.run_id == first.run_id  # the run id travels in the checkpoint
    assert client.get_run(second.run_id).info.status == "FINISHED"
    points = sorted((m.step, m.value) for m in client.get_metric_history(second.run_id,
                                                                         "train_loss"))
    assert points == [(h["epoch"], pytest.approx(h["train_loss"])) for h in resumed["history"]]

    failed = MLflowLogger(tracking_uri, log_model=False)
    with pytest.raises(RuntimeError, match="worker lost"):
        fit_worker(0, 1, data(), settings([failed, FailAt(1)]))
    loggers._fail_open_runs()  # what the worker process does at exit
    assert client.get_run(failed.run_id).info.status == "FAILED"


# ---------------------------------------------------------------------- both
def test_a_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # find_spec -> None, import fails
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError) as error:
        TensorBoardLogger("logs")
    assert str(error.value) == ("TensorBoardLogger needs the 'tensorboard' package: "
                                "pip install 'flink-torch-ml[tensorboard]'")
    with pytest.raises(ImportError) as error:
        MLflowLogger()
    assert str(error.value) == ("MLflowLogger needs the 'mlflow' package: "
                                "pip install 'flink-torch-ml[mlflow]'")


def fake_loop(rank, train_settings):
    def save_model(path, model_format):
        raise AssertionError("rank %d saved a model" % rank)

    model = train_settings.model
    return types.SimpleNamespace(rank=rank, world_size=2, start_epoch=0, attempt=0,
                                 settings=train_settings, model=model, optimizer=sgd(model),
                                 history=[], stop_training=False, save_model=save_model)


def test_loggers_pickle_before_and_while_training(tmp_path, tracking_uri):
    tensorboard = TensorBoardLogger(str(tmp_path / "tb"), prefix="p/")
    mlflow = MLflowLogger(tracking_uri, experiment="e", run_name="r", log_model=False)
    for logger in (tensorboard, mlflow):
        copied = cloudpickle.loads(cloudpickle.dumps(logger))
        assert type(copied) is type(logger) and vars(copied) == vars(logger)
    loop = fake_loop(0, settings([]))
    for logger in (tensorboard, mlflow):  # rank 0 mid-fit: writer and client are dropped
        logger.set_loop(loop)
        logger.on_train_begin()
        copied = cloudpickle.loads(cloudpickle.dumps(logger))
        assert copied.loop is None and getattr(copied, "writer", None) is None
        assert getattr(copied, "_client", None) is None
        logger.on_train_end()


def test_ranks_other_than_0_write_nothing(tmp_path, tracking_uri):
    log_dir, store = tmp_path / "tb", tmp_path / "mlruns"
    log_dir.mkdir()
    logs = {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.7, "train_rows": 10, "attempt": 0}
    for logger in (TensorBoardLogger(str(log_dir)), MLflowLogger(tracking_uri)):
        logger.set_loop(fake_loop(1, settings([])))
        logger.on_train_begin()
        logger.on_epoch_begin(0)
        logger.on_batch_end(0, {"loss": torch.tensor(0.5), "rows": 10})
        logger.on_epoch_end(0, logs)
        logger.on_train_end()
        assert getattr(logger, "run_id", None) is None
    assert os.listdir(log_dir) == [] and not store.exists()


def test_mlflow_a_database_store_without_sqlalchemy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    logger = MLflowLogger("sqlite:////tmp/never/mlflow.db")
    logger.set_loop(fake_loop(0, settings([])))
    with pytest.raises(ImportError, match="is a database, which needs SQLAlchemy and Alembic"):
        logger.on_train_begin()
    assert logger.run_id is None and not os.path.exists("/tmp/never")


def test_mlflow_tracking_uri_defaults_to_the_clients_environment(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "mlruns")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    logger = MLflowLogger()
    assert logger.tracking_uri == str(tmp_path / "mlruns") and logger.experiment == "from-env"
    assert MLflowLogger("databricks").tracking_uri == "databricks"
    assert MLflowLogger("sqlite:///x.db").tracking_uri == "sqlite:///x.db"


def test_importing_the_package_imports_neither_tensorboard_nor_mlflow():
    code = ("import sys, flink_torch_ml; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorboard', 'mlflow'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
