"""Shared fixtures: one batch and one streaming TableEnvironment per test session (a JVM start
costs seconds), and small model/table builders used across the tests."""

import pytest


@pytest.fixture(scope="session")
def batch_env():
    from flink_torch_ml import create_table_environment
    return create_table_environment("batch", parallelism=2)


@pytest.fixture(scope="session")
def stream_env():
    from flink_torch_ml import create_table_environment
    return create_table_environment("streaming", parallelism=2)


@pytest.fixture(autouse=True)
def _planner_ready(request):
    """Tests run the library (and PyFlink) from several threads; a planner call that lands
    on a py4j thread without Calcite's providers breaks the planner for every later test
    (FLINK-23020, see flink_torch_ml/client/planner.py). Repair it before each test."""
    from flink_torch_ml import prepare_planner
    for name in ("stream_env", "batch_env"):
        if name in request.fixturenames:
            prepare_planner(request.getfixturevalue(name))


def pytest_terminal_summary(terminalreporter):
    """Name any Flink Python worker still running when the session ends (a leak to chase:
    the library ends its own workers once their run is over)."""
    from tests.processes import describe_process, python_workers

    left = python_workers()
    if left:
        terminalreporter.write_line("Flink Python workers still running at the end of the "
                                    "session:\n  " + "\n  ".join(describe_process(p)
                                                                  for p in left[:10]))
