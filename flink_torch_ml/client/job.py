"""The Flink job of a distributed run, defined in the client: W PyTorch workers at once, each
on a disjoint shard of a table.

Mechanism (docs/guide/low-level.md, "How training runs"; the functions are in ``operators.py``):
- a vectorized UDF over the input table (``FeedFunction``) gets Arrow batches from Flink and
  sends each one, checked, to a worker's feed server (``feed.py``), round-robin, while the
  source runs;
- the workers live in a row-at-a-time UDAF over ``GROUP BY shard, TUMBLE(constant rowtime)``
  (``NodeFunction``) that receives only one pad row per shard: its Python process opens at job
  start and starts the feed server; the window fires at the end of input, after every batch
  was acknowledged, and runs the node there. Shard keys are chosen by asking the JVM which
  subtask a key lands on, so shard r runs on subtask r.
"""

import os
import re
import sys
import uuid
from typing import Dict, List, Optional, Tuple

from pyflink.table import DataTypes, Schema, Table
from pyflink.table.udf import udaf, udf, udtf

from .._compat import table_columns
from .._defaults import ARROW_BATCH_ROWS, MAX_PARALLELISM, TIMEOUT
from ..core.types import DataType
from ..errors import SchemaError
from ..worker.job_spec import JobSpec
from ..worker.operators import ExplodeRows, FeedFunction, NodeFunction
from .planner import planned
from .schema import data_type_of, flink_type

__all__ = ["check_environment", "configure_job", "use_process_workers", "shard_keys",
           "stream_shard_keys", "keys_per_subtask", "default_python_executable",
           "node_results_table", "explode_rows_udtf", "check_input_types", "is_local",
           "results_sink", "unbounded_sources"]

SHARD, ROWTIME = "__ftm_shard", "__ftm_rowtime"


def check_environment(t_env, world_size: int) -> None:
    """Fail before submission when the environment cannot run W workers together."""
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
    slots = config.get("taskmanager.numberOfTaskSlots", None)
    if slots is not None and int(slots) < world_size and is_local(t_env):
        raise ValueError(f"world_size={world_size} PyTorch workers must run at the same time, "
                         f"but this local environment has taskmanager.numberOfTaskSlots="
                         f"{slots}; raise it to at least {world_size} or lower world_size")


#: where PyFlink's "loopback" mode (Python functions run inside the client) is configured
LOOPBACK_ADDRESS = "python.loopback-server.address"
#: the process environment variable PyFlink reads to choose its Python workers' mode
PROCESS_MODE_VARIABLE = "_python_worker_execution_mode"


def use_process_workers(t_env) -> None:
    """Run Python functions in Flink's Python worker processes, never in the client process
    (PyFlink's "loopback" mode, its default on the embedded mini-cluster): each PyTorch rank
    needs a process of its own. Removes ``python.loopback-server.address`` from the
    environment's table and execution configuration, and sets the process environment
    variable ``_python_worker_execution_mode=process`` unless it is set (PyFlink reads it
    whenever it wraps an execution environment, and starts loopback mode again without it)."""
    os.environ.setdefault(PROCESS_MODE_VARIABLE, "process")
    config = t_env.get_config()
    if config.get(LOOPBACK_ADDRESS, None) is None:
        return
    from pyflink.java_gateway import get_gateway

    option = get_gateway().jvm.org.apache.flink.python.PythonOptions \
        .PYTHON_LOOPBACK_SERVER_ADDRESS
    config._j_table_config.getConfiguration().removeConfig(option)
    try:
        t_env._get_j_env().getConfiguration().removeConfig(option)
    except Exception:  # pragma: no cover - a read-only execution configuration
        pass


def configure_job(t_env, world_size: int, timeout: float = TIMEOUT) -> None:
    """Set what the run's job needs in the environment's configuration (the docstrings of
    ``fit`` and ``train`` say so): Python workers in their own processes, their interpreter,
    W as parallelism, a pinned max parallelism (shard keys depend on it), bounded slot
    requests and the feed's batch sizes (unless configured)."""
    config = t_env.get_config()
    use_process_workers(t_env)
    default_python_executable(config)
    if config.get("slot.request.timeout", None) is None:  # Flink's default waits 5 minutes
        config.set("slot.request.timeout", f"{int(timeout * 1000)} ms")
    for option in ("python.fn-execution.arrow.batch.size", "python.fn-execution.bundle.size"):
        if config.get(option, None) is None:  # the feed's batches: 1,000 rows by default
            config.set(option, str(ARROW_BATCH_ROWS))
    config.set("parallelism.default", str(world_size))
    config.set("pipeline.max-parallelism", str(MAX_PARALLELISM))


def default_python_executable(config) -> None:
    """Flink's Python workers run this interpreter unless configured otherwise."""
    if config.get("python.executable", None) is None:
        config.set("python.executable", sys.executable)


def is_local(t_env) -> bool:
    """True on Flink's embedded mini-cluster (the job runs inside this process's JVM)."""
    from pyflink.util.java_utils import get_j_env_configuration, is_local_deployment

    try:
        return bool(is_local_deployment(get_j_env_configuration(t_env._get_j_env())))
    except Exception:  # pragma: no cover - older PyFlink layouts
        return False


def shard_keys(world_size: int, max_parallelism: int = MAX_PARALLELISM) -> List[int]:
    """Key values k_0..k_{W-1} such that ``GROUP BY`` an INT column equal to k_r runs on
    subtask r: built the way the planner builds the group key (a one-INT BinaryRowData)."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm

    def group_key(value: int):
        row = jvm.org.apache.flink.table.data.binary.BinaryRowData(1)
        writer = jvm.org.apache.flink.table.data.writer.BinaryRowWriter(row)
        writer.writeInt(0, value)
        writer.complete()
        return row

    return keys_per_subtask(world_size, max_parallelism, group_key)


def stream_shard_keys(world_size: int, max_parallelism: int = MAX_PARALLELISM) -> List[int]:
    """Key values k_0..k_{W-1} such that a DataStream keyed by an INT key equal to k_r goes
    to subtask r (PyFlink's ``key_by`` wraps the key in a one-field Row)."""
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm

    def row_key(value: int):
        row = jvm.org.apache.flink.types.Row.withPositions(1)
        row.setField(0, jvm.java.lang.Integer(value))
        return row

    return keys_per_subtask(world_size, max_parallelism, row_key)


def keys_per_subtask(world_size: int, max_parallelism: int, java_key) -> List[int]:
    """The first int per subtask whose Java key (``java_key(int)``) Flink's own
    KeyGroupRangeAssignment places on that subtask, in subtask order."""
    from pyflink.java_gateway import get_gateway

    assignment = get_gateway().jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment
    found: Dict[int, int] = {}
    value = 0
    while len(found) < world_size:
        found.setdefault(assignment.assignKeyToParallelOperator(
            java_key(value), max_parallelism, world_size), value)
        value += 1
        if value > 1_000_000:
            raise RuntimeError(f"No shard keys found for world size {world_size}")
    return [found[r] for r in range(world_size)]


def _quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def explode_rows_udtf(output_types: List[DataType]):
    """The table function turning a worker's result into the rows it wrote."""
    return udtf(ExplodeRows(), result_types=[flink_type(t) for t in output_types])


def node_results_table(t_env, table: Table, spec: JobSpec, keys: List[int]) -> Table:
    """A table with one row (shard key, JSON result) per worker, produced when the job runs.

    The input goes through ``FeedFunction`` (batches to the workers while the source runs);
    its output is filtered away, so the workers' operator sees only one pad row per shard
    (which opens it at job start and makes every rank run) and the end-of-input watermark,
    which passes the feed only after its last batch was acknowledged."""
    tag = uuid.uuid4().hex[:10]
    source = f"_ftm_src_{tag}"
    t_env.create_temporary_view(source, _unfoldable(t_env, table))
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
        stream = planned(t_env, lambda: t_env.to_data_stream(union))
    except Exception as error:
        if "doesn't support consuming update changes" not in str(error):
            raise
        raise SchemaError("The input table is an updating table (the result of a GROUP BY, "
                          "JOIN or similar that changes rows it emitted earlier); the workers "
                          "read every row once, so they need an insert-only table: aggregate "
                          "over a window, or write the result to a table and read that") \
            from None
    _refuse_unbounded(t_env, stream)
    _forget_transformation(t_env, stream)
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


def _unfoldable(t_env, table: Table) -> Table:
    """``table``, or for a table of literal rows (SQL ``VALUES``, Java's ``fromValues``) the same
    rows behind a DataStream round trip. The planner folds literal columns into the feed's
    arguments as constants, and a pandas UDF left with no column input fails inside Flink
    (``ArrowWriter.finish``: index 0 out of bounds); the planner cannot fold across the round
    trip. Literal tables are small, so its cost does not matter; other tables keep their plan."""
    if "Values(" not in planned(t_env, table.explain):
        return table
    stream = planned(t_env, lambda: t_env.to_data_stream(table))
    _forget_transformation(t_env, stream)
    return t_env.from_data_stream(stream)


_TABLE_NAME = re.compile(r"table=\[\[([^\]]+)\]\]")


def unbounded_sources(t_env, stream) -> List[str]:
    """The names of the sources upstream of a DataStream that certainly never end, e.g.
    ``default_catalog.default_database.clicks``. Only certain verdicts count (refusing a
    table that would have ended is worse than not catching one that will not):
    - a unified-Source-API source (Kafka, files, ...) declares its boundedness;
    - input-format sources (``VALUES``, ``from_elements``) always end;
    - other legacy sources are read from their table's options where those decide it
      (``datagen`` without ``number-of-rows`` and without a ``sequence`` field)."""
    names = []
    for transformation in stream._j_data_stream.getTransformation().getTransitivePredecessors():
        kind = str(transformation.getClass().getSimpleName())
        if kind not in ("SourceTransformation", "LegacySourceTransformation"):
            continue
        if str(transformation.getBoundedness().toString()) != "CONTINUOUS_UNBOUNDED":
            continue
        name = str(transformation.getName())
        found = _TABLE_NAME.search(name)
        name = found.group(1).replace(", ", ".") if found else re.sub(r"\[\d+\]$", "", name)
        if kind == "LegacySourceTransformation":
            function = str(transformation.getOperator().getUserFunction().getClass().getName())
            if "InputFormatSourceFunction" in function or \
                    not _options_say_unbounded(_table_options(t_env, name)):
                continue
        names.append(name)
    return names


def _table_options(t_env, name: str) -> Optional[dict]:
    """The connector options of the catalog table ``name`` (as a source names it), or None."""
    try:
        from pyflink.java_gateway import get_gateway

        manager = t_env._j_tenv.getCatalogManager()
        parts = name.split(".")
        catalog = parts[-3] if len(parts) >= 3 else manager.getCurrentCatalog()
        database = parts[-2] if len(parts) >= 2 else manager.getCurrentDatabase()
        identifier = get_gateway().jvm.org.apache.flink.table.catalog.ObjectIdentifier.of(
            catalog, database, parts[-1])
        table = manager.getTable(identifier)
        if not table.isPresent():
            return None
        return {str(k): str(v) for k, v in dict(
            table.get().getResolvedTable().getOptions()).items()}
    except Exception:  # a view, or a catalog we cannot read: no verdict
        return None


def _options_say_unbounded(options: Optional[dict]) -> bool:
    if not options or options.get("connector") != "datagen":
        return False
    sequence = any(k.startswith("fields.") and k.endswith(".kind") and v == "sequence"
                   for k, v in options.items())
    return "number-of-rows" not in options and not sequence


def _refuse_unbounded(t_env, stream) -> None:
    sources = unbounded_sources(t_env, stream)
    if sources:
        raise SchemaError(
            f"The input table is unbounded (source {', '.join(sources)} never ends), so the "
            f"workers would wait for the end of input forever. Training reads a bounded "
            f"table: use a bounded source (e.g. set 'number-of-rows' for datagen, a bounded "
            f"scan for Kafka or files), or train online on unbounded input")


def _forget_transformation(t_env, stream) -> None:
    """``to_data_stream`` registers the stream's transformation with the
    StreamExecutionEnvironment; the run's table job carries it anyway, so remove it there,
    or a later ``env.execute()`` of the user's would run it again."""
    try:
        j_env = t_env._get_j_env()
        j_env.getTransformations().remove(stream._j_data_stream.getTransformation())
    except Exception:  # pragma: no cover - an internal API; leaving it is harmless for us
        pass


def results_sink():
    """A blackhole sink for a run's results table, for runs added to a StatementSet."""
    from pyflink.table import TableDescriptor

    return (TableDescriptor.for_connector("blackhole")
            .schema(Schema.new_builder().column("shard", DataTypes.INT())
                    .column("node_result", DataTypes.STRING()).build()).build())


def check_input_types(table: Table, types: Optional[List[DataType]]) -> Tuple[List[str],
                                                                             List[DataType]]:
    """The table's columns and their types, checked against ``input_types`` if given."""
    names, flink_types = table_columns(table)
    actual = [data_type_of(t, n) for n, t in zip(names, flink_types)]
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
