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
