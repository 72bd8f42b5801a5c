"""Online training (OnlinePyTorchEstimator) and scoring that follows a model stream, on a
real embedded Flink cluster: version order, buffering before the first version, a model
stream read back from a filesystem table by a second job, bad input, concept drift, and a
killed worker restarted from a Flink checkpoint."""

import io
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import (InvalidDataError, OnlinePyTorchEstimator, PyTorchModel,
                            SchemaError, create_table_environment)
from tests.models import ScalarRegressor

SCHEMA = DataTypes.ROW([DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                        DataTypes.FIELD("x2", DataTypes.DOUBLE()),
                        DataTypes.FIELD("y", DataTypes.DOUBLE())])


@pytest.fixture(scope="module")
def online_env():
    """Its own environment (same JVM): online fits lower the Python bundle time."""
    return create_table_environment("streaming", parallelism=2)


def rows(n, seed=0):
    points = np.random.default_rng(seed).uniform(-1, 1, size=(n, 2))
    return [(float(a), float(b), float(2 * a - b + 0.5)) for a, b in points]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.2)


def estimator(**overrides):
    torch.manual_seed(0)
    settings = dict(feature_cols=["x1", "x2"], label_col="y", global_batch_size=100,
                    worker_num=2)
    settings.update(overrides)
    return OnlinePyTorchEstimator(ScalarRegressor(), nn.MSELoss(), sgd, **settings)


def unbounded_points(env, name, rate):
    """An unbounded datagen table ``name`` of points (x1, x2) in [-1, 1]^2 at ``rate``
    rows/s."""
    env.execute_sql(
        f"CREATE TEMPORARY TABLE {name} (x1 DOUBLE, x2 DOUBLE) WITH ('connector' = 'datagen', "
        f"'rows-per-second' = '{rate}', 'fields.x1.min' = '-1', 'fields.x1.max' = '1', "
        f"'fields.x2.min' = '-1', 'fields.x2.max' = '1')")


def collect(table):
    with table.execute().collect() as result:
        return [tuple(r) for r in result]


def versions_of(model):
    data = model.get_model_data()[0]
    return collect(data.select(data.modelVersion, data.versionTime, data.format, data.model,
                               data.spec, data.rowsTrained, data.loss))


@pytest.mark.compat
def test_a_bounded_table_trains_to_its_end_with_versions_in_order(online_env):
    table = online_env.from_elements(rows(1050), SCHEMA)
    versions = versions_of(estimator().fit(table))
    assert [v[0] for v in versions] == list(range(1, 12))
    assert [v[5] for v in versions] == [100] * 10 + [50]  # the last update takes the rest
    assert all(np.isfinite(v[6]) for v in versions)
    assert versions[-1][6] < versions[0][6] / 4  # it learns the linear rule
    assert all(v[2] == "torchscript" and json.loads(v[4])["features"] for v in versions)
    final = torch.jit.load(io.BytesIO(bytes(versions[-1][3])))
    x = torch.tensor([[0.5], [-0.25]]), torch.tensor([[0.1], [0.3]])
    expected = 2 * x[0] - x[1] + 0.5
    assert torch.allclose(final(*x), expected, atol=0.35)


@pytest.mark.compat
def test_event_time_windows_make_one_version_per_window(online_env, tmp_path):
    """window_ms instead of global_batch_size: a table with event time (a CSV file with a
    WATERMARK) whose rows fall into three 1 s windows -> three versions, one per window,
    each trained on that window's rows, stamped with the window's last millisecond."""
    data = tmp_path / "timed"
    data.mkdir()
    lines, counts = [], [150, 200, 250]
    for window, count in enumerate(counts):
        for i, (a, b, y) in enumerate(rows(count, seed=window)):
            ms = window * 1000 + (i * 997) % 1000
            lines.append(f"{a},{b},{y},2026-01-01 00:00:{ms // 1000:02d}.{ms % 1000:03d}\n")
    (data / "part-0.csv").write_text("".join(lines))
    online_env.execute_sql(f"""CREATE TEMPORARY TABLE timed (x1 DOUBLE, x2 DOUBLE, y DOUBLE,
        ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH (
        'connector' = 'filesystem', 'path' = '{data}', 'format' = 'csv')""")
    table = online_env.from_path("timed")
    versions = versions_of(estimator(global_batch_size=None, window_ms=1000).fit(table))
    assert [v[0] for v in versions] == [1, 2, 3]
    assert [v[5] for v in versions] == counts
    times = [v[1] for v in versions]
    assert times[1] - times[0] == 1000 and times[2] - times[1] == 1000
    assert times[0] % 1000 == 999
    assert all(np.isfinite(v[6]) for v in versions)


def test_event_time_windows_on_an_unbounded_stream_follow_the_watermark(online_env):
    """An unbounded datagen stream stamped with the wall clock (TIMESTAMP_LTZ event time):
    versions come one per 1 s window, in window order, while the job runs."""
    online_env.execute_sql(
        "CREATE TEMPORARY TABLE clocked (x1 DOUBLE, x2 DOUBLE, ts AS "
        "CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)), WATERMARK FOR ts AS ts - INTERVAL "
        "'0.2' SECOND) WITH ('connector' = 'datagen', 'rows-per-second' = '400', "
        "'fields.x1.min' = '-1', 'fields.x1.max' = '1', 'fields.x2.min' = '-1', "
        "'fields.x2.max' = '1')")
    table = online_env.sql_query("SELECT x1, x2, 2 * x1 - x2 + 0.5 AS y, ts FROM clocked")
    data = estimator(global_batch_size=None, window_ms=1000).fit(table).get_model_data()[0]
    seen, started = [], time.monotonic()
    with data.select(data.modelVersion, data.versionTime, data.rowsTrained).execute() \
            .collect() as result:
        for row in result:
            seen.append(tuple(row))
            if len(seen) == 4 or time.monotonic() - started > 120:
                break
    assert [v[0] for v in seen] == [1, 2, 3, 4], seen
    times = [v[1] for v in seen]
    assert all(t % 1000 == 999 for t in times) and times == sorted(set(times)), seen
    assert all(v[2] > 0 for v in seen), seen  # each window's rows, from both ranks


def test_window_mode_needs_event_time_and_excludes_global_batch_size(online_env):
    table = online_env.from_elements(rows(10), SCHEMA)
    with pytest.raises(SchemaError, match="window_ms needs event time"):
        estimator(global_batch_size=None, window_ms=1000).fit(table)
    with pytest.raises(ValueError, match="global_batch_size or window_ms, not both"):
        estimator(window_ms=1000).fit(table)


@pytest.mark.compat
def test_scoring_in_the_same_job_buffers_rows_until_the_first_version(online_env):
    data = rows(600, seed=1)
    table = online_env.from_elements(data, SCHEMA)
    model = estimator(global_batch_size=200).fit(table)
    scored = collect(model.transform(table)[0])
    # every row is scored, none dropped: the first 200 rows arrive before version 1 exists
    assert sorted(r[:3] for r in scored) == sorted(data)
    assert len(scored) == 600
    assert {r[4] for r in scored} <= {1, 2, 3} and min(r[4] for r in scored) >= 1
    assert all(isinstance(r[3], float) for r in scored)


def test_a_model_stream_read_back_from_a_filesystem_table_scores_a_second_job(online_env,
                                                                             tmp_path):
    table = online_env.from_elements(rows(400, seed=2), SCHEMA)
    path = str(tmp_path / "versions")
    online_env.execute_sql(
        f"CREATE TEMPORARY TABLE versions_fs (modelVersion BIGINT, versionTime BIGINT, "
        f"format STRING, `model` BYTES, spec STRING, rowsTrained BIGINT, loss DOUBLE) "
        f"WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')")
    estimator().fit(table).get_model_data()[0].execute_insert("versions_fs").wait()
    written = {r[0]: bytes(r[1]) for r in collect(
        online_env.sql_query("SELECT modelVersion, `model` FROM versions_fs"))}
    assert sorted(written) == [1, 2, 3, 4]
    # a second job: a fresh model that knows only its feature columns follows the stream
    follower = PyTorchModel(feature_cols=["x1", "x2"], prediction_col="yhat")
    follower.set_model_data(online_env.from_path("versions_fs"))
    inputs = rows(50, seed=3)
    scored = collect(follower.transform(online_env.from_elements(inputs, SCHEMA))[0])
    assert len(scored) == 50
    for x1, x2, _, prediction, version in scored:
        net = torch.jit.load(io.BytesIO(written[version]))
        expected = net(torch.tensor([[x1]], dtype=torch.float32),
                       torch.tensor([[x2]], dtype=torch.float32)).item()
        assert prediction == pytest.approx(expected, abs=1e-5)


def test_bad_settings_are_refused_before_submission(online_env):
    table = online_env.from_elements(rows(10), SCHEMA)
    with pytest.raises(ValueError, match="global_batch_size=1 is smaller than worker_num=2"):
        estimator(global_batch_size=1).fit(table)
    with pytest.raises(ValueError, match="global_batch_size is required"):
        estimator(global_batch_size=None).fit(table)
    with pytest.raises(SchemaError, match="'nope'"):
        estimator(feature_cols=["x1", "nope"]).fit(table)
    with pytest.raises(SchemaError, match="already has a column 'y'"):
        estimator(model_version_col="y").fit(table)


def test_a_null_feature_fails_the_job_naming_the_column_and_the_rank(online_env):
    data = rows(300, seed=4)
    data[150] = (None, data[150][1], data[150][2])
    table = online_env.from_elements(data, SCHEMA)
    with pytest.raises(Exception) as failure:
        versions_of(estimator().fit(table))
    text = str(failure.value)
    assert "'x1' holds NULL" in text and "rank" in text
    assert InvalidDataError.__name__ in text


def test_concept_drift_example_recovers_while_a_static_model_does_not(online_env):
    import importlib.util

    examples = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    spec = importlib.util.spec_from_file_location(
        "online_drift", os.path.join(examples, "online_drift.py"))
    drift = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drift)
    summary = drift.run(create_table_environment("streaming", parallelism=2), rows=16000,
                        rate=1000, global_batch_size=200)
    assert summary.attrs["scored_rows"] == 16000
    after = summary[summary["after_drift"] > 0.99]
    last = after.tail(3)
    online = (last["online_accuracy"] * last["rows"]).sum() / last["rows"].sum()
    static = (last["static_accuracy"] * last["rows"]).sum() / last["rows"].sum()
    assert online >= 0.9, summary
    assert static <= 0.7, summary
    assert 0 <= drift.versions_to_recover(summary) <= 25, summary.to_string()


class KillRank1Once:
    """A loss that kill -9s its own worker process on rank 1 at its ``at``-th update, once
    (a marker file remembers it across the restart)."""

    def __init__(self, marker, at):
        self.marker, self.at, self.calls = marker, at, 0
        self.inner = nn.MSELoss()

    def __call__(self, prediction, target):
        self.calls += 1
        if torch.distributed.get_rank() == 1:
            if self.calls == self.at and not os.path.exists(self.marker):
                with open(self.marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)
            if os.path.exists(self.marker) and not os.path.exists(self.marker + ".after"):
                with open(self.marker + ".after", "w") as f:  # rank 1 in the new attempt
                    f.write(str(os.getpid()))
        return self.inner(prediction, target)


def test_a_killed_worker_restarts_from_the_checkpointed_version(tmp_path):
    env = create_table_environment("streaming", parallelism=2, config={
        "execution.checkpointing.interval": "500 ms",
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": "3",
        "restart-strategy.fixed-delay.delay": "1 s"})
    unbounded_points(env, "points", 2000)
    table = env.sql_query("SELECT x1, x2, 2 * x1 - x2 + 0.5 AS y FROM points")
    marker = str(tmp_path / "killed")
    torch.manual_seed(0)
    model = OnlinePyTorchEstimator(ScalarRegressor(), KillRank1Once(marker, 15), sgd,
                                   feature_cols=["x1", "x2"], label_col="y",
                                   global_batch_size=100, worker_num=2).fit(table)
    data = model.get_model_data()[0]
    seen = []
    with data.select(data.modelVersion, data.loss).execute().collect() as result:
        for version, loss in result:
            seen.append((version, loss))
            if os.path.exists(marker) and version >= 40:
                break
    assert os.path.exists(marker), "the worker was never killed"
    with open(marker) as killed, open(marker + ".after") as after:
        assert killed.read() != after.read()  # rank 1 trains again, in a new process
    versions = [v for v, _ in seen]
    # the collect sink delivers only checkpointed rows (exactly once): a restart from the
    # checkpointed state continues the sequence; one from scratch would repeat 1, 2, ...
    assert versions == list(range(1, len(versions) + 1)), versions
    assert versions[-1] >= 40
    assert seen[-1][1] < seen[0][1] / 4  # the weights survived: the loss did not reset


def test_without_checkpointing_a_killed_worker_fails_the_job_in_bounded_time(tmp_path):
    env = create_table_environment("streaming", parallelism=2,
                                   config={"restart-strategy.type": "none"})
    unbounded_points(env, "points2", 2000)
    table = env.sql_query("SELECT x1, x2, 2 * x1 - x2 AS y FROM points2")
    marker = str(tmp_path / "killed")
    torch.manual_seed(0)
    model = OnlinePyTorchEstimator(ScalarRegressor(), KillRank1Once(marker, 5), sgd,
                                   feature_cols=["x1", "x2"], label_col="y",
                                   global_batch_size=100, worker_num=2,
                                   timeout=30).fit(table)
    data = model.get_model_data()[0]
    started = time.monotonic()
    with pytest.raises(Exception) as failure:
        with data.select(data.modelVersion).execute().collect() as result:
            for _ in result:
                assert time.monotonic() - started < 120, "still running after the kill"
    assert os.path.exists(marker)
    # Flink reports the lost Python worker (its error does not name the rank); what matters
    # here is that the job fails at once instead of waiting for the rank that died
    assert time.monotonic() - started < 120
    assert failure.value is not None


def test_the_trainers_flink_metrics_move_while_the_job_runs():
    """Unlike a batch fit (one long call), online training reports live: the trainer's
    modelVersion, rowsTrained and loss gauges rise/fall in the REST API while it runs."""
    from tests.integration.test_observability import rest, watched_env

    env, port = watched_env()
    unbounded_points(env, "watched", 1000)
    env.execute_sql("CREATE TEMPORARY TABLE versions_sink (v BIGINT, loss DOUBLE) "
                    "WITH ('connector' = 'blackhole')")
    table = env.sql_query("SELECT x1, x2, 2 * x1 - x2 + 0.5 AS y FROM watched")
    # a slow learner: with the usual lr the exact linear rule is learnt to a loss below the
    # gauge's 1e-6 resolution within ~50 versions, before a loaded machine's first sample
    torch.manual_seed(0)
    slow = OnlinePyTorchEstimator(ScalarRegressor(), nn.MSELoss(),
                                  lambda m: torch.optim.SGD(m.parameters(), lr=0.02),
                                  feature_cols=["x1", "x2"], label_col="y",
                                  global_batch_size=100, worker_num=2)
    data = slow.fit(table).get_model_data()[0]
    job = data.select(data.modelVersion, data.loss).execute_insert("versions_sink")
    job_id = str(job.get_job_client().get_job_id())
    seen, deadline = [], time.monotonic() + 90
    try:
        while time.monotonic() < deadline and len(seen) < 6:
            try:
                for vertex in rest(port, f"/jobs/{job_id}")["vertices"]:
                    base = f"/jobs/{job_id}/vertices/{vertex['id']}/subtasks/metrics"
                    ids = [m["id"] for m in rest(port, base) if ".flink_torch_ml." in m["id"]]
                    wanted = [i for i in ids if i.rsplit(".", 1)[1] in (
                        "modelVersion", "rowsTrained", "lastUpdateLossX1e6")]
                    if len(wanted) == 3:
                        got = {m["id"].rsplit(".", 1)[1]: m for m in rest(
                            port, f"{base}?get={','.join(wanted)}&agg=sum,max")}
                        if got["modelVersion"]["max"] > 0:
                            seen.append((got["modelVersion"]["max"],
                                         got["rowsTrained"]["sum"],
                                         got["lastUpdateLossX1e6"]["max"]))
            except (OSError, KeyError):
                pass  # the REST endpoint or the job is starting
            time.sleep(1.0)
    finally:
        job.get_job_client().cancel().result()
    assert len(seen) >= 3, seen
    versions, rows_trained, losses = zip(*seen)
    assert list(versions) == sorted(versions) and versions[-1] > versions[0], seen
    assert list(rows_trained) == sorted(rows_trained) and rows_trained[-1] > 0, seen
    # the ranks' rows add up to the versions' (each version is 100 rows), give or take the
    # moment each metric was last reported: during the catch-up burst at the start the
    # counter and the gauge can be read a few dozen versions apart, so check the last sample
    # (counting one rank's rows only, or both twice, would be thousands off by then)
    assert abs(rows_trained[-1] - 100 * versions[-1]) <= 1500, seen
    assert losses[-1] < losses[0], seen


def test_the_online_estimator_saves_and_loads_with_its_initial_model(online_env, tmp_path):
    """FlinkML-style save/load: params as JSON, the model and callables pickled, a
    PyTorchModel given as initial_model saved beside them in the library's format; the loaded
    estimator fits and publishes the initial weights as version 0."""
    start = ScalarRegressor()
    with torch.no_grad():
        start.linear.weight.fill_(0.5)
    initial = PyTorchModel(start, ["x1", "x2"])
    original = estimator(initial_model=initial, global_batch_size=120)
    original.save(str(tmp_path / "online"))
    loaded = OnlinePyTorchEstimator.load(online_env, str(tmp_path / "online"))
    assert loaded.get_global_batch_size() == 120 and loaded.get_worker_num() == 2
    assert list(loaded.get_feature_cols()) == ["x1", "x2"] and loaded.get_label_col() == "y"
    assert isinstance(loaded.get_initial_model(), PyTorchModel)
    versions = versions_of(loaded.fit(online_env.from_elements(rows(240), SCHEMA)))
    assert [v[0] for v in versions] == [0, 1, 2]
    first = torch.jit.load(io.BytesIO(bytes(versions[0][3])))
    x = torch.tensor([[1.0]]), torch.tensor([[1.0]])
    assert torch.allclose(first(*x), start(*x))
