"""What a user watches: Flink metrics of running scoring and training jobs, read back through
Flink's REST API (the mini-cluster's endpoint on a port the test chooses) and checked against
the rows processed; TensorBoard and MLflow records of a distributed fit, read back."""

import json
import socket
import time
import urllib.request

import numpy as np
import pytest

from flink_torch_ml import PyTorchModel, create_table_environment
from tests.models import ScalarRegressor

N = 3000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def watched_env():
    """A streaming environment whose jobs serve Flink's REST API on a free port, with short
    bundles and a 0.5 s metric cache (the REST API's default is 10 s): (env, port)."""
    port = free_port()
    return create_table_environment("streaming", parallelism=2, config={
        "rest.port": port, "rest.bind-port": port, "python.fn-execution.bundle.time": "200",
        "metrics.fetcher.update-interval": "500"}), port


def rest(port: int, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return json.loads(reply.read())


def scoring_metrics(port: int, job: str):
    """{metric name without its operator prefix: summed value} of the job's scoring UDF."""
    values = {}
    for vertex in rest(port, f"/jobs/{job}")["vertices"]:
        base = f"/jobs/{job}/vertices/{vertex['id']}/subtasks/metrics"
        ids = [m["id"] for m in rest(port, base) if ".flink_torch_ml." in m["id"]]
        if ids:
            for m in rest(port, f"{base}?get={','.join(ids)}&agg=sum,max"):
                name = m["id"].split(".flink_torch_ml.", 1)[1]
                values[name] = m.get("sum", m.get("max"))
    return values


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_scoring_metrics_count_every_row_through_the_rest_api(tmp_path, fmt):
    """An unbounded filesystem source (it keeps watching its directory) holding N rows: once
    they are scored the job idles, still running, so its metrics can be read."""
    rng = np.random.default_rng(3)
    data = tmp_path / "input"
    data.mkdir()
    rows = rng.normal(size=(N, 2)).astype(np.float32)
    # and rows handle_invalid='skip' drops: a missing (NULL) or NaN feature
    (data / "part-0.csv").write_text("".join(f"{a},{b}\n" for a, b in rows) +
                                     "1.0,null\nnull,2.0\n0.5,NaN\n")
    env, port = watched_env()
    env.execute_sql(f"""CREATE TEMPORARY TABLE watched (x1 FLOAT, x2 DOUBLE) WITH (
        'connector' = 'filesystem', 'path' = '{data}', 'format' = 'csv',
        'source.monitor-interval' = '1 s', 'csv.null-literal' = 'null')""")
    PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(str(tmp_path / "m"), format=fmt)
    model = PyTorchModel.load(env, str(tmp_path / "m")).set_handle_invalid("skip")
    env.execute_sql("CREATE TEMPORARY TABLE sink (x1 FLOAT, x2 DOUBLE, prediction FLOAT) "
                    "WITH ('connector' = 'blackhole')")
    result = model.transform(env.from_path("watched"))[0].execute_insert("sink")
    job = str(result.get_job_client().get_job_id())
    try:
        deadline, values = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            try:
                values = scoring_metrics(port, job)
            except OSError:  # the REST endpoint is still starting
                values = {}
            if values.get(f"format.{fmt}.rowsScored", 0) >= N and \
                    values.get(f"format.{fmt}.rowsSkippedInvalid", 0) >= 3:
                break  # the skipped rows may come in a later bundle
            time.sleep(1)
        assert values.get(f"format.{fmt}.rowsScored") == N, values
        assert values.get(f"format.{fmt}.rowsSkippedInvalid") == 3, values
        batches = values[f"format.{fmt}.batchesScored"]
        assert 1 <= batches <= N
        mean, top = (values[f"format.{fmt}.{n}BatchInferenceMicros"] for n in ("mean", "max"))
        assert 0 < mean <= top
        assert 0 < values[f"format.{fmt}.lastBatchInferenceMicros"] <= top
        assert values[f"format.{fmt}.modelVersion"] == 0
        assert f"format.{fmt}.rowsScoredPerSecond" in values, sorted(values)
    finally:
        result.get_job_client().cancel().result()


def test_training_input_metrics_count_the_rows_sent_to_the_workers_while_they_arrive():
    """While a fit's input arrives, the feed's metrics count the rows sent to the PyTorch
    workers: they rise, never pass the rows Flink handed the feed operator, never pass the
    table's size. (Once the source has ended its task finishes and leaves the REST API.)"""
    import threading

    import torch
    from torch import nn

    from flink_torch_ml import PyTorchEstimator

    n = 3000
    env, port = watched_env()
    env.execute_sql(f"""CREATE TEMPORARY TABLE slow_rows (x DOUBLE, y DOUBLE) WITH (
        'connector' = 'datagen', 'number-of-rows' = '{n}', 'rows-per-second' = '300',
        'fields.x.min' = '-1', 'fields.x.max' = '1', 'fields.y.min' = '-1',
        'fields.y.max' = '1')""")
    estimator = PyTorchEstimator(
        model=nn.Linear(1, 1), loss=nn.MSELoss(),
        optimizer_creator=lambda m: torch.optim.SGD(m.parameters(), lr=1e-3),
        feature_cols=["x"], label_col="y", max_epochs=2, batch_size=64, worker_num=2,
        timeout=60.0)
    outcome = {}
    fit = threading.Thread(target=lambda: outcome.update(model=estimator.fit(
        env.from_path("slow_rows"))))
    fit.start()
    seen = []  # (rows sent to the workers, rows the feed operator received), summed
    try:
        while fit.is_alive():
            try:
                jobs = [j["id"] for j in rest(port, "/jobs")["jobs"] if j["status"] == "RUNNING"]
                for vertex in rest(port, f"/jobs/{jobs[0]}")["vertices"] if jobs else []:
                    base = f"/jobs/{jobs[0]}/vertices/{vertex['id']}/subtasks/metrics"
                    ids = [m["id"] for m in rest(port, base)]
                    sent = [i for i in ids if i.endswith(".flink_torch_ml.rowsSentToWorkers")]
                    if sent:
                        calc = sent[0].split(".flink_torch_ml.")[0] + ".numRecordsIn"
                        got = {m["id"]: m["sum"]
                               for m in rest(port, f"{base}?get={sent[0]},{calc}&agg=sum")}
                        seen.append((got[sent[0]], got[calc]))
            except (OSError, KeyError):
                pass  # the REST endpoint is starting, or the source task just finished
            time.sleep(0.3)
    finally:
        fit.join(120)
    assert "model" in outcome
    assert outcome["model"].history[0]["train_rows"] == n
    assert any(sent > 0 for sent, _ in seen), seen
    assert all(sent <= received <= n for sent, received in seen), seen
    assert [sent for sent, _ in seen] == sorted(sent for sent, _ in seen), seen


def test_tensorboard_and_mlflow_record_a_two_worker_fit_once(stream_env, tmp_path, monkeypatch):
    """Both loggers travel inside the Flink job; only rank 0 writes: one scalar per epoch and
    tag, one MLflow run with the settings, the per-epoch history and the model, loadable."""
    import torch
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch import nn

    from flink_torch_ml import MLflowLogger, PyTorchEstimator, TensorBoardLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: file stores are opt-in
    tracking = (tmp_path / "mlruns").as_uri()
    rows = [(float(i % 17) / 17, 2.0 * (i % 17) / 17 + 1) for i in range(300)]
    table = stream_env.from_elements(rows, ["x", "y"])
    estimator = PyTorchEstimator(
        model=nn.Linear(1, 1), loss=nn.MSELoss(),
        optimizer_creator=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        feature_cols=["x"], label_col="y", max_epochs=3, batch_size=16, worker_num=2,
        callbacks=[TensorBoardLogger(str(tmp_path / "tb")),
                   MLflowLogger(tracking, experiment="flink-fit", run_name="two-workers")],
        timeout=60.0)
    model = estimator.fit(table)
    history = model.history

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    losses = events.Scalars("train_loss")
    assert [e.step for e in losses] == [1, 2, 3]
    assert [e.value for e in losses] == pytest.approx([h["train_loss"] for h in history],
                                                      rel=1e-5)

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("flink-fit")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "two-workers"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2" and run.data.params["max_epochs"] == "3"
    metric = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in sorted(metric, key=lambda m: m.step)] == [1, 2, 3]
    saved = [a.path for a in client.list_artifacts(run.info.run_id, "model")]
    assert saved, "the fitted model was not logged"
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl"))
    reloaded = PyTorchModel.load(stream_env, local)
    scored = reloaded.transform(table)[0].to_pandas()
    assert len(scored) == len(rows)
