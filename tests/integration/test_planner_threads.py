"""Planner calls made on a py4j connection other than the one that created the
TableEnvironment (FLINK-23020: Calcite's metadata providers live in a Java ThreadLocal).

py4j serves each pooled connection on its own Java thread; a second connection appears as
soon as two Python threads use the gateway at once (the library's own threads free Java
objects too). The CI run that found this failed 45 tests in a row with
``NullPointerException: metadataHandlerProvider``."""

import contextlib

import pytest
import torch
from pyflink.java_gateway import get_gateway
from torch import nn

from flink_torch_ml import PyTorchEstimator
from flink_torch_ml.client.planner import planned, prepare_planner


@contextlib.contextmanager
def on_a_fresh_py4j_thread():
    """Hold every pooled py4j connection, so the next call opens a new one (a new Java
    thread that never planned anything)."""
    client = get_gateway()._gateway_client
    held = []
    while True:
        try:
            held.append(client.deque.pop())
        except IndexError:
            break
    try:
        yield
    finally:
        for connection in reversed(held):
            client.deque.append(connection)


@pytest.mark.compat
def test_flink_alone_fails_on_a_fresh_py4j_thread_and_then_everywhere(stream_env):
    """The bug this guards against is real on the Flink in use (else the tests below prove
    nothing): one planner call on a fresh thread breaks the planner for every thread, until
    prepare_planner repairs it."""
    table = stream_env.from_elements([(1, 2.0), (2, 3.0)], ["a", "b"])
    try:
        with on_a_fresh_py4j_thread():
            with pytest.raises(Exception, match="metadataHandlerProvider"):
                stream_env.to_data_stream(table.where(table.a > 1))
        with pytest.raises(Exception, match="metadataHandlerProvider"):
            stream_env.to_data_stream(table.where(table.a > 0))  # the creating thread
    finally:
        prepare_planner(stream_env)
    stream_env.to_data_stream(table.where(table.a > 0))


@pytest.mark.compat
def test_planned_calls_work_on_a_fresh_py4j_thread(stream_env):
    table = stream_env.from_elements([(1, 2.0), (2, 3.0), (3, 4.0)], ["a", "b"])
    with on_a_fresh_py4j_thread():
        result = planned(stream_env, table.where(table.a > 1).execute)
        with result.collect() as rows:
            assert sorted(r[0] for r in rows) == [2, 3]


@pytest.mark.compat
def test_fit_and_transform_work_on_a_fresh_py4j_thread(stream_env):
    rows = [(float(i), float(i) * 2.0) for i in range(64)]
    table = stream_env.from_elements(rows, ["x", "y"])
    estimator = PyTorchEstimator(
        model=nn.Linear(1, 1), loss=nn.MSELoss(),
        optimizer_creator=lambda m: torch.optim.SGD(m.parameters(), lr=1e-3),
        feature_cols=["x"], label_col="y", max_epochs=1, batch_size=16, worker_num=2,
        timeout=60.0)
    with on_a_fresh_py4j_thread():
        model = estimator.fit(table)
        scored = model.transform(table)[0]
        with planned(stream_env, scored.execute).collect() as out:
            assert len(list(out)) == 64
