"""The Flink side of running W PyTorch workers at once, each on a disjoint shard of a table.

Mechanism (measured in ../shared/ARCHITECTURE.md and our own prototype): a streaming job where
every row gets a constant event time (watermark = event time) and a shard key; a pandas UDAF
over ``GROUP BY shard, TUMBLE(rowtime)`` fires once per shard at end of input, receives the
whole shard as Arrow columns and hosts one PyTorch worker. Shard keys are chosen by asking the
JVM which subtask a key lands on, so shard r runs on subtask r; one pad row per shard makes
every rank run even when its shard is empty. Training logic lives in ``worker.py``.
"""

import os
import pickle
import sys
import uuid
from typing import List, Optional, Tuple

import pandas as pd
from pyflink.table import DataTypes, Schema, Table
from pyflink.table.udf import AggregateFunction, TableFunction, udaf, udtf

from .data_types import DataType
from .errors import SchemaError
from .worker import JobSpec, announce_deployed, columns_from_pandas, run_node

__all__ = ["check_environment", "shard_keys", "node_results_table", "explode_rows_udtf",
           "MAX_PARALLELISM"]

SHARD, PAD, ROWTIME = "__ftm_shard", "__ftm_pad", "__ftm_rowtime"
MAX_PARALLELISM = 128


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


def sharded_view(t_env, table: Table, names: List[str], types: List[DataType],
                 keys: List[int]) -> str:
    """A view of the input columns plus a shard key, a pad flag and a constant rowtime, with
    one pad row per shard so every shard has a group. Everything stays in the JVM."""
    tag = uuid.uuid4().hex[:10]
    world_size = len(keys)
    source = f"_ftm_src_{tag}"
    t_env.create_temporary_view(source, table)
    pad_rows = ", ".join(f"({k})" for k in keys)
    cols = ", ".join(_quote(n) for n in names)
    nulls = ", ".join(f"CAST(NULL AS {t.sql_name}) AS {_quote(n)}" for n, t in zip(names, types))
    # RAND_INTEGER keeps the key non-constant even for W = 1 (a constant key is folded away
    # by the planner and the Python window aggregate cannot be planned).
    if world_size == 1:
        key_expr = f"CAST({keys[0]} + RAND_INTEGER(1) AS INT)"
    else:
        cases = " ".join(f"WHEN {r} THEN {k}" for r, k in enumerate(keys[:-1]))
        key_expr = f"CASE RAND_INTEGER({world_size}) {cases} ELSE {keys[-1]} END"
    union = t_env.sql_query(
        f"SELECT {cols}, {key_expr} AS {SHARD}, FALSE AS {PAD} FROM {source} "
        f"UNION ALL SELECT {nulls}, CAST(k AS INT) AS {SHARD}, TRUE AS {PAD} "
        f"FROM (VALUES {pad_rows}) AS pads(k)")
    stream = t_env.to_data_stream(union)
    timed = t_env.from_data_stream(stream, Schema.new_builder()
                                   .column_by_expression(ROWTIME, "TO_TIMESTAMP_LTZ(0, 3)")
                                   .watermark(ROWTIME, ROWTIME)
                                   .build())
    view = f"_ftm_sharded_{tag}"
    t_env.create_temporary_view(view, timed)
    t_env.drop_temporary_view(source)
    return view


class NodeFunction(AggregateFunction):
    """A pandas UDAF hosting one PyTorch worker per shard (group)."""

    def __init__(self, spec: JobSpec):
        self._spec = spec
        self._subtask = -1
        self._attempt = 0

    def open(self, function_context) -> None:
        self._subtask = function_context.get_index_of_this_subtask()
        self._attempt = function_context.get_attempt_number()
        import torch.distributed  # noqa: F401  (import while the input is still arriving)
        announce_deployed(self._spec, self._subtask)

    def create_accumulator(self):
        return []

    def accumulate(self, accumulator, shard: pd.Series, pad: pd.Series, *series: pd.Series):
        import time
        received = time.time()
        spec = self._spec
        keys = shard.unique()
        if len(keys) != 1:
            raise RuntimeError(f"One group holds several shard keys {list(keys)}")
        rank = spec.key_to_rank[int(keys[0])]
        data = ~pad.to_numpy(dtype=bool)
        types = [DataType.from_name(t) for t in spec.input_types]

        def columns():
            return columns_from_pandas([s[data].reset_index(drop=True) for s in series],
                                       spec.input_names, types)

        result = run_node(spec, rank, self._subtask, self._attempt, columns)
        result.update(received_at=received)
        accumulator.append(pickle.dumps(result))

    def get_value(self, accumulator):
        return accumulator[0]


class ExplodeRows(TableFunction):
    """Turns a worker's pickled result into the rows it wrote."""

    def eval(self, payload: bytes):
        for row in pickle.loads(payload)["output"] or ():
            yield row


def explode_rows_udtf(output_types: List[DataType]):
    return udtf(ExplodeRows(), result_types=[t.to_flink() for t in output_types])


def node_results_table(t_env, table: Table, spec: JobSpec, keys: List[int]) -> Table:
    """A table with one row (rank, result bytes) per worker, produced when the job runs."""
    types = [DataType.from_name(t) for t in spec.input_types]
    view = sharded_view(t_env, table, spec.input_names, types, keys)
    function = udaf(NodeFunction(spec), result_type=DataTypes.BYTES(), func_type="pandas")
    name = f"_ftm_node_{uuid.uuid4().hex[:10]}"
    t_env.create_temporary_function(name, function)
    args = ", ".join([SHARD, PAD] + [_quote(n) for n in spec.input_names])
    return t_env.sql_query(
        f"SELECT {SHARD} AS `shard`, {name}({args}) AS `node_result` FROM {view} "
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
