"""Create a TableEnvironment configured the way flink-torch-ml expects.

The Python workers Flink starts must use the interpreter that has torch installed, and the
parallelism should be explicit (the adaptive batch scheduler may otherwise lower it).
"""

import os
import sys
from typing import Dict, Optional

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import EnvironmentSettings, StreamTableEnvironment

__all__ = ["create_table_environment"]


def create_table_environment(mode: str = "batch", parallelism: int = 2,
                             config: Optional[Dict[str, str]] = None) -> StreamTableEnvironment:
    """A batch or streaming StreamTableEnvironment on Flink's embedded mini-cluster (or the
    cluster the job is submitted to), with ``python.executable`` set to this interpreter and
    Python functions run in Flink's Python worker processes (PyFlink's "process" mode; its
    local default runs them inside this process, where PyTorch workers cannot run in
    parallel): this sets the process environment variable
    ``_python_worker_execution_mode=process`` unless it is set. Distributed training
    (``pytorch_utils``, the estimators) needs ``mode="streaming"``; other environments work
    for them too (they switch to process mode the same way)."""
    if mode not in ("batch", "streaming"):
        raise ValueError(f"mode must be 'batch' or 'streaming', got {mode!r}")
    if not isinstance(parallelism, int) or parallelism < 1:
        raise ValueError(f"parallelism must be a positive int, got {parallelism!r}")
    settings = (EnvironmentSettings.in_batch_mode() if mode == "batch"
                else EnvironmentSettings.in_streaming_mode())
    base = Configuration()
    base.set_string("parallelism.default", str(parallelism))
    # PyFlink reads this whenever it wraps an execution environment (and then starts its
    # in-process worker pool without it)
    os.environ.setdefault("_python_worker_execution_mode", "process")
    env = StreamExecutionEnvironment.get_execution_environment(base)
    t_env = StreamTableEnvironment.create(env, environment_settings=settings)
    conf = t_env.get_config()
    conf.set("parallelism.default", str(parallelism))
    # Submitted with `flink run -pyexec ...` (or a cluster config naming the workers'
    # interpreter), keep that; on the embedded mini-cluster the workers run this interpreter.
    for key in ("python.executable", "python.client.executable"):
        if conf.get(key, None) is None:
            conf.set(key, sys.executable)
    for key, value in (config or {}).items():
        conf.set(key, str(value))
    return t_env

