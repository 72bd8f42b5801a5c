"""The Flink side of running W PyTorch workers at once, each on a disjoint shard of a table.

Mechanism (see ../shared/ARCHITECTURE.md and the README's "How training runs"):
- a vectorized UDF over the input table (``FeedFunction``) gets Arrow batches from Flink and
  sends each one, checked and converted to numpy, to a worker's feed server (``feed.py``),
  round-robin, while the source runs;
- the workers live in a row-at-a-time UDAF over ``GROUP BY shard, TUMBLE(constant rowtime)``
  (``NodeFunction``) that receives only one pad row per shard: its Python process opens at job
  start and starts the feed server; the window fires at the end of input, after every batch
  was acknowledged, and runs the node there. Shard keys are chosen by asking the JVM which
  subtask a key lands on, so shard r runs on subtask r. Training logic lives in ``worker.py``.
"""

import os
import pickle
import sys
import threading
import time
import uuid
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
from pyflink.table import DataTypes, Schema, Table
from pyflink.table.udf import AggregateFunction, ScalarFunction, TableFunction, udaf, udf, udtf

from .data_types import DataType
from .errors import SchemaError
from .feed import FeedSender, FeedServer
from .orphan_guard import start_orphan_guard
from .worker import (FEED, JobSpec, WorkerError, announce_deployed, columns_from_pandas,
                     record_error, run_key, run_node)

__all__ = ["check_environment", "shard_keys", "node_results_table", "explode_rows_udtf",
           "MAX_PARALLELISM"]

SHARD, ROWTIME = "__ftm_shard", "__ftm_rowtime"
MAX_PARALLELISM = 128
#: rows per batch the feed ships to a worker, unless python.fn-execution.* says otherwise
FEED_BATCH_ROWS = 10_000


def check_environment(t_env, world_size: int, timeout: float = 180.0) -> None:
    """Fail before submission when the environment cannot run W workers together, and set
    what the workers need (interpreter, parallelism, max parallelism)."""
    from pyflink.table import StreamTableEnvironment

    if not isinstance(t_env, StreamTableEnvironment):
        raise ValueError("Distributed PyTorch needs a StreamTableEnvironment in streaming mode, "
                         "e.g. flink_torch_ml.create_table_environment('streaming') or "
                         "StreamTableEnvironment.create(env); bounded tables work and the job "
                         "ends at the end of input")
    config = t_env.get_config()
    if config.get("execution.runtime-mode", "streaming").lower() == "batch":
        raise ValueError("Distributed PyTorch needs streaming mode (the workers must all run "
                         "at the same time); this environment is in batch mode. Bounded tables "
                         "work in streaming mode too")
    if config.get("python.loopback-server.address", None) and \
            os.environ.get("_python_worker_execution_mode") != "process":
        raise ValueError("This TableEnvironment runs Python functions inside the client "
                         "process (PyFlink's loopback mode), where PyTorch workers cannot run "
                         "in parallel: import flink_torch_ml before creating the environment "
                         "(or set os.environ['_python_worker_execution_mode'] = 'process')")
    slots = config.get("taskmanager.numberOfTaskSlots", None)
    if slots is not None and int(slots) < world_size and _is_local(t_env):
        raise ValueError(f"world_size={world_size} PyTorch workers must run at the same time, "
                         f"but this local environment has taskmanager.numberOfTaskSlots="
                         f"{slots}; raise it to at least {world_size} or lower world_size")
    if config.get("python.executable", None) is None:
        config.set("python.executable", sys.executable)
    if config.get("slot.request.timeout", None) is None:  # Flink's default waits 5 minutes
        config.set("slot.request.timeout", f"{int(timeout * 1000)} ms")
    for option in ("python.fn-execution.arrow.batch.size", "python.fn-execution.bundle.size"):
        if config.get(option, None) is None:  # the feed's batches: 1,000 rows by default
            config.set(option, str(FEED_BATCH_ROWS))
    config.set("parallelism.default", str(world_size))
    config.set("pipeline.max-parallelism", str(MAX_PARALLELISM))


def _is_local(t_env) -> bool:
    from pyflink.util.java_utils import get_j_env_configuration, is_local_deployment

    try:
        return bool(is_local_deployment(get_j_env_configuration(t_env._get_j_env())))
    except Exception:  # pragma: no cover - older PyFlink layouts
        return False


def shard_keys(world_size: int, max_parallelism: int = MAX_PARALLELISM) -> List[int]:
    """Key values k_0..k_{W-1} such that ``GROUP BY`` an INT column equal to k_r runs on
    subtask r: built the way the planner builds the group key (a one-INT BinaryRowData) and
    placed by Flink's own KeyGroupRangeAssignment."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    binary_row = jvm.org.apache.flink.table.data.binary.BinaryRowData
    writer_class = jvm.org.apache.flink.table.data.writer.BinaryRowWriter
    assignment = jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment
    found, value = {}, 0
    while len(found) < world_size:
        row = binary_row(1)
        writer = writer_class(row)
        writer.writeInt(0, value)
        writer.complete()
        found.setdefault(assignment.assignKeyToParallelOperator(row, max_parallelism,
                                                                world_size), value)
        value += 1
        if value > 1_000_000:
            raise RuntimeError(f"No shard keys found for world size {world_size}")
    return [found[r] for r in range(world_size)]


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


class FeedFunction(ScalarFunction):
    """A vectorized UDF over the input table: each Arrow batch Flink hands it is checked,
    converted to numpy columns and sent to the next PyTorch worker (round-robin). Returns
    -1 per row (filtered out before the workers' operator)."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._sender: Optional[FeedSender] = None
        self._store = None
        self._attempt = 0
        self._subtask = 0
        self._types = [DataType.from_name(t) for t in spec.input_types]

    def is_deterministic(self) -> bool:
        return False  # it has a side effect: never fold, reorder or drop its calls

    def open(self, function_context) -> None:
        self._subtask = function_context.get_index_of_this_subtask()
        self._attempt = function_context.get_attempt_number()
        start_orphan_guard()  # a killed TaskManager must not leave this process behind

    def _start(self) -> FeedSender:
        from .rendezvous import connect

        spec, attempt = self._spec, self._attempt
        store = self._store = connect(spec.rendezvous)

        def lookup(rank: int) -> str:
            key = run_key(attempt, f"feed/{rank}")
            deadline = time.monotonic() + spec.timeout
            while not store.check([key]):
                if store.check([run_key(attempt, "first_error")]):
                    raise WorkerError(f"The run failed before rank {rank} could receive data")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"PyTorch worker rank {rank} did not start receiving data within "
                        f"{spec.timeout:.0f} s (fewer free task slots than world_size="
                        f"{spec.world_size}, or the worker died at start-up)")
                time.sleep(0.01)
            return store.get(key).decode()

        def sent(rank: int, rows: int) -> None:
            store.add(run_key(attempt, f"fed/{rank}"), rows)

        return FeedSender(spec.world_size, self._subtask, spec.timeout, lookup, sent)

    def eval(self, *series: pd.Series) -> pd.Series:
        spec = self._spec
        try:
            if self._sender is None:
                self._sender = self._start()
            columns = columns_from_pandas(list(series), spec.input_names, self._types)
            self._sender.send(columns)
        except BaseException as error:
            self._record(error)
            raise
        return pd.Series(np.full(len(series[0]), -1, dtype=np.int32))

    def _record(self, error: BaseException) -> None:
        """Record the error like a worker's, so the client reports it rather than Flink's
        wrapping of it (a worker's own earlier error stays the one reported)."""
        try:
            if self._store is None:
                from .rendezvous import connect
                self._store = connect(self._spec.rendezvous)
            record_error(self._store, self._attempt, FEED, f"{type(error).__name__}: {error}",
                         type(error).__name__)
        except Exception:  # the client is gone; Flink still reports the error
            pass

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


def _warm_up_torch() -> None:
    """Import what training entries need while the input is still arriving: creating the
    first optimizer imports torch._dynamo, over a second on a small machine."""
    try:
        import torch._dynamo  # noqa: F401
        import torch.distributed  # noqa: F401
        import torch.optim  # noqa: F401
    except Exception:  # only a warm-up: the entry's own import reports any real problem
        pass


class NodeFunction(AggregateFunction):
    """A row-at-a-time UDAF over ``GROUP BY shard, TUMBLE(rowtime)`` hosting one PyTorch
    worker per shard: open() starts the worker's feed server (its Python process opens at
    the shard's pad row, so while the input still streams); the window fires at the end of
    input, when every batch has been delivered, and get_value() runs the node."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._subtask = -1
        self._attempt = 0
        self._server: Optional[FeedServer] = None
        self._store = None
        self._warm_up: Optional[threading.Thread] = None

    def open(self, function_context) -> None:
        from .rendezvous import connect, local_address_towards

        spec = self._spec
        self._subtask = function_context.get_index_of_this_subtask()
        self._attempt = function_context.get_attempt_number()
        start_orphan_guard()
        self._store = connect(spec.rendezvous)
        self._server = FeedServer(local_address_towards(spec.rendezvous.host), spec.timeout)
        self._store.set(run_key(self._attempt, f"feed/{self._subtask}"), self._server.address)
        announce_deployed(self._store)
        if spec.output_types is None:  # a training run: its entry will create an optimizer
            self._warm_up = threading.Thread(target=_warm_up_torch, daemon=True,
                                             name="ftm-warm-up")
            self._warm_up.start()

    def create_accumulator(self):
        return [-1]

    def get_accumulator_type(self):
        return DataTypes.ARRAY(DataTypes.INT())

    def get_result_type(self):
        return DataTypes.BYTES()

    def accumulate(self, accumulator, shard):
        accumulator[0] = shard

    def get_value(self, accumulator):
        received = time.time()
        spec, server, store = self._spec, self._server, self._store
        rank = spec.key_to_rank[int(accumulator[0])]

        def columns():
            expected = store.add(run_key(self._attempt, f"fed/{rank}"), 0)
            if expected == 0:  # an empty shard (tiny input): typed empty columns
                types = [DataType.from_name(t) for t in spec.input_types]
                return columns_from_pandas([pd.Series([], dtype=object) for _ in types],
                                           spec.input_names, types)
            return server.columns(expected)

        if self._warm_up is not None:  # no imports in two threads at once (import deadlocks)
            self._warm_up.join(spec.timeout)
        try:
            result = run_node(spec, rank, self._subtask, self._attempt, columns)
        finally:
            server.close()
        result.update(received_at=received, first_batch_at=server.first_batch_at)
        return pickle.dumps(result)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class ExplodeRows(TableFunction):
    """Turns a worker's pickled result into the rows it wrote."""

    def eval(self, payload: bytes):
        for row in pickle.loads(payload)["output"] or ():
            yield row


def explode_rows_udtf(output_types: List[DataType]):
    return udtf(ExplodeRows(), result_types=[t.to_flink() for t in output_types])


def node_results_table(t_env, table: Table, spec: JobSpec, keys: List[int]) -> Table:
    """A table with one row (shard key, result bytes) per worker, produced when the job runs.

    The input goes through ``FeedFunction`` (batches to the workers while the source runs);
    its output is filtered away, so the workers' operator sees only one pad row per shard
    (which opens it at job start and makes every rank run) and the end-of-input watermark,
    which passes the feed only after its last batch was acknowledged."""
    tag = uuid.uuid4().hex[:10]
    source = f"_ftm_src_{tag}"
    t_env.create_temporary_view(source, table)
    feed = f"_ftm_feed_{tag}"
    t_env.create_temporary_function(feed, udf(FeedFunction(spec), result_type=DataTypes.INT(),
                                              func_type="pandas"))
    args = ", ".join(_quote(n) for n in spec.input_names)
    pad_rows = ", ".join(f"({k})" for k in keys)
    union = t_env.sql_query(
        f"SELECT {SHARD} FROM (SELECT {feed}({args}) AS {SHARD} FROM {source}) "
        f"WHERE {SHARD} >= 0 "
        f"UNION ALL SELECT CAST(k + RAND_INTEGER(1) AS INT) AS {SHARD} "
        f"FROM (VALUES {pad_rows}) AS pads(k)")
    try:
        stream = t_env.to_data_stream(union)
    except Exception as error:
        if "doesn't support consuming update changes" not in str(error):
            raise
        raise SchemaError("The input table is an updating table (the result of a GROUP BY, "
                          "JOIN or similar that changes rows it emitted earlier); the workers "
                          "read every row once, so they need an insert-only table: aggregate "
                          "over a window, or write the result to a table and read that") \
            from None
    timed = t_env.from_data_stream(stream, Schema.new_builder()
                                   .column_by_expression(ROWTIME, "TO_TIMESTAMP_LTZ(0, 3)")
                                   .watermark(ROWTIME, ROWTIME)
                                   .build())
    view = f"_ftm_sharded_{tag}"
    t_env.create_temporary_view(view, timed)
    node = f"_ftm_node_{tag}"
    t_env.create_temporary_function(node, udaf(NodeFunction(spec)))
    return t_env.sql_query(
        f"SELECT {SHARD} AS `shard`, {node}({SHARD}) AS `node_result` FROM {view} "
        f"GROUP BY {SHARD}, TUMBLE({ROWTIME}, INTERVAL '1' DAY)")


def table_columns(table: Table) -> Tuple[List[str], list]:
    schema = table.get_resolved_schema()
    return list(schema.get_column_names()), list(schema.get_column_data_types())


def check_input_types(table: Table, types: Optional[List[DataType]]) -> Tuple[List[str],
                                                                             List[DataType]]:
    """The table's columns and their types, checked against ``input_types`` if given."""
    names, flink_types = table_columns(table)
    actual = [DataType.from_flink(t, n) for n, t in zip(names, flink_types)]
    if types is None:
        return names, actual
    if len(types) != len(names):
        raise SchemaError(f"input_types names {len(types)} types "
                          f"({','.join(t.type_name for t in types)}) but the table has "
                          f"{len(names)} columns ({', '.join(names)})")
    for name, want, got in zip(names, types, actual):
        if want is not got:
            raise SchemaError(f"input_types says column {name!r} is {want.type_name}, but the "
                              f"table has {got.type_name}; cast the column or fix input_types")
    return names, types
