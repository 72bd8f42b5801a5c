"""The low-level API of DL-on-Flink: run a user's node entry on W PyTorch workers inside Flink.

``train(statement_set, config, table, epoch)`` adds the training job to a StatementSet (or runs
it at once without one); ``inference(statement_set, table, config, output_schema)`` returns
the table of rows the workers write. See ``PyTorchContext`` for what an entry function gets.
"""

from typing import Any, Dict, List, Optional, Sequence, Union

from pyflink.table import Schema, StatementSet, Table
from pyflink.table.expressions import col

from .cluster_config import PyTorchClusterConfig
from .data_types import DataType
from .errors import SchemaError
from .client.run import DistributedRun
from .client.job import explode_rows_udtf, results_sink

__all__ = ["train", "inference"]


def train(statement_set: Optional[StatementSet], config: PyTorchClusterConfig, table: Table,
          epoch: int = 1) -> Optional[List[Dict[str, Any]]]:
    """Run ``config``'s node entry on ``world_size`` workers, each reading a disjoint shard of
    ``table`` (``epoch`` times over).

    With a StatementSet the job is added to it and runs at ``statement_set.execute()``;
    with ``statement_set=None`` it runs now and one summary per rank is returned
    (``rank``, ``rows``, ``pid``, ``seconds``; ``entry_result`` when the entry returned a
    JSON-able value). A failing worker raises ``WorkerError`` naming the rank, with its
    traceback.

    Changes to the table environment's configuration (its jobs need them): Python
    functions run in worker processes (``python.loopback-server.address`` removed;
    the process environment variable ``_python_worker_execution_mode=process`` set unless
    set),
    ``parallelism.default`` = ``world_size`` (restored after a run without a StatementSet),
    ``pipeline.max-parallelism`` = 128, and where unset ``python.executable`` (this
    interpreter), ``slot.request.timeout`` (the timeout) and
    ``python.fn-execution.arrow.batch.size``/``bundle.size`` (10,000).
    """
    if statement_set is not None:
        _check_statement_set(statement_set)
        _check_no_retries(config, "train with a StatementSet")
    run = _run(table, config, epoch, output_types=None)
    if statement_set is not None:
        statement_set.add_insert(results_sink(), run.results)
        run.release_when_done()
        return None
    try:
        return run.collect_with_retries(config.get_max_failures())
    finally:
        run.release()


def inference(statement_set: Optional[StatementSet], table: Table,
              config: PyTorchClusterConfig,
              output_schema: Union[Schema, Sequence[str], None] = None) -> Table:
    """A table of the rows the workers write with ``get_data_writer_to_flink().write(row)``.

    ``output_types`` (a config property) gives the column types; ``output_schema`` the column
    names (a ``Schema`` or a list of names; default ``f0, f1, ...``). The job runs when the
    returned table is executed or inserted (e.g. through ``statement_set``)."""
    if statement_set is not None:
        _check_statement_set(statement_set)
    _check_config(config)
    _check_no_retries(config, "inference")
    output_types = config.get_output_types()
    if output_types is None:
        raise SchemaError("inference needs the 'output_types' property, e.g. "
                          "set_property('output_types', 'FLOAT_32,FLOAT_32')")
    names = _output_names(output_schema, len(output_types))
    run = _run(table, config, 1, output_types=output_types)
    run.release_when_done()
    explode = explode_rows_udtf(output_types)
    return run.results.join_lateral(explode(col("node_result")).alias(*names)).select(
        *[col(n) for n in names])


def _run(table: Table, config: PyTorchClusterConfig, epochs: int,
         output_types: Optional[List[DataType]]) -> DistributedRun:
    _check_config(config)
    return DistributedRun(table, config.get_node_entry(), config.get_world_size(),
                          config.get_properties(), config.get_timeout(), epochs, output_types,
                          config.get_input_types(),
                          config.get_property(PyTorchClusterConfig.RENDEZVOUS_HOST),
                          config.get_property(PyTorchClusterConfig.RENDEZVOUS_BIND))


def _check_config(config) -> None:
    if not isinstance(config, PyTorchClusterConfig):
        raise TypeError(f"config must be a PyTorchClusterConfig (use "
                        f"PyTorchClusterConfig.new_builder()...build()), got "
                        f"{type(config).__name__}")


def _check_no_retries(config: PyTorchClusterConfig, what: str) -> None:
    if config.get_max_failures():
        raise ValueError(f"max_failures needs train(None, ...) to run the job itself; {what} "
                         f"runs the job later, where it cannot be resubmitted")


def _check_statement_set(statement_set) -> None:
    if not isinstance(statement_set, StatementSet):
        raise TypeError(f"statement_set must be a pyflink StatementSet (or None to run now), "
                        f"got {type(statement_set).__name__}")


def _output_names(schema, count: int) -> List[str]:
    if schema is None:
        return [f"f{i}" for i in range(count)]
    if isinstance(schema, Schema):
        names = [str(c.getName()) for c in schema._j_schema.getColumns()]
    else:
        names = list(schema)
    if len(names) != count or not all(isinstance(n, str) for n in names):
        raise SchemaError(f"output_schema names {len(names)} columns {names} but output_types "
                          f"has {count} types")
    return names
