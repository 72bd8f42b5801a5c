"""Reading a failed Flink job's message (failures.py) and the worker error classes."""

import pytest

from flink_torch_ml import InvalidDataError, SchemaError, TaskManagerLostError, WorkerError
from flink_torch_ml.errors import worker_error_class
from flink_torch_ml.client import failures
from flink_torch_ml.core.distributed import lost_peer

TRACE = "org.apache.flink.runtime.JobException: Recovery is suppressed\n\tat org.foo(Bar.java:1)\n"


@pytest.mark.parametrize("line", [
    "Connection unexpectedly closed by remote task manager '127.0.0.1/127.0.0.1:40123'.",
    "TaskManager with id 127.0.0.1:40123-abc is no longer reachable.",
    "Heartbeat of TaskManager with id 127.0.0.1:1-x timed out.",
])
def test_a_lost_task_manager_is_recognised(line):
    assert failures.task_manager_lost(TRACE + "Caused by: " + line + "\n\tat x") == \
        line.rstrip(".")
    assert failures.python_worker_crashed(TRACE + line) is None


def test_a_crashed_python_worker_is_recognised():
    message = TRACE + "Caused by: java.lang.RuntimeException: Python process exits with code: 137"
    assert failures.python_worker_crashed(message) == "Python process exits with code: 137"
    assert failures.task_manager_lost(message) is None


def test_our_error_is_cut_out_of_the_java_trace():
    message = (TRACE + "Caused by: org.apache.beam...: Traceback...\n"
               "flink_torch_ml.errors.WorkerError: Rank 1 finished, but it timed out\n"
               "\tat org.apache.beam.Foo(Foo.java:1)\n")
    assert failures.raised_in_worker(message) == "Rank 1 finished, but it timed out"
    assert failures.raised_in_worker(TRACE) is None
    assert failures.no_resources("...NoResourceAvailableException: Could not acquire...")


def test_worker_error_classes_are_both_kinds():
    cls = worker_error_class("InvalidDataError")
    assert issubclass(cls, WorkerError) and issubclass(cls, InvalidDataError)
    assert issubclass(worker_error_class("SchemaError"), SchemaError)
    assert worker_error_class("ValueError") is WorkerError
    assert worker_error_class("TaskManagerLostError") is TaskManagerLostError


def test_a_collective_broken_by_a_lost_peer_is_recognised():
    gloo = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
            "closed by peer [127.0.0.1]:7875. This is typically caused by a remote worker "
            "crashing.")
    assert lost_peer(gloo)
    assert lost_peer("RuntimeError: [gloo] ... Connection reset by peer")
    assert not lost_peer("ValueError: bad loss on purpose")
    from flink_torch_ml.errors import is_retriable
    assert is_retriable(worker_error_class("WorkerLostError")("x"))
    assert not is_retriable(worker_error_class("ValueError")("x"))
