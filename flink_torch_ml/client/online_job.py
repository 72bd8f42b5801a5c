"""The Flink job of online training, defined in the client: the input table's rows go
round-robin to ``worker_num`` subtasks of ``OnlineTrainer`` (one rank each, keyed by shard
keys that Flink places one per subtask), plus one pad row per rank that starts every rank at
once; the trainers' version rows become the model-data table.
"""

from typing import List, Optional, Tuple

from pyflink.common import Types
from pyflink.datastream.functions import KeySelector
from pyflink.table import DataTypes, Table
from pyflink.table.types import DataType
from pyflink.table.expressions import col, lit

from .._compat import table_columns
from .._defaults import MAX_PARALLELISM
from ..worker.online_trainer import VERSION_FIELDS, OnlineSpec, OnlineTrainer
from .run import shipped_by_value
from .job import default_python_executable, stream_shard_keys
from .planner import planned

__all__ = ["RANK_MARKER", "version_row_type", "model_data_table", "rowtime_field",
           "ShardSelector"]

RANK_MARKER = "__ftm_rank"
EVENT_TIME = "__ftm_event_time"


class ShardSelector(KeySelector):
    """Input rows go to the ranks in turn (so every rank's buffer fills at the same pace);
    a pad row goes to the rank it names."""

    def __init__(self, keys: List[int]):
        self._keys = list(keys)
        self._next = 0

    def get_key(self, value) -> int:
        marker = value[0]
        if marker is not None and marker >= 0:
            return self._keys[marker]
        self._next = (self._next + 1) % len(self._keys)
        return self._keys[self._next]


def version_row_type(version_col: str):
    """The DataStream type of model-data rows."""
    return Types.ROW_NAMED([version_col, *VERSION_FIELDS],
                           [Types.LONG(), Types.LONG(), Types.STRING(),
                            Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING(), Types.LONG(),
                            Types.DOUBLE()])


def model_data_table(t_env, table: Table, spec: OnlineSpec, version_col: str) -> Table:
    """The unbounded table of model versions the online job produces (lazily: the job runs
    when a pipeline consuming it executes)."""
    default_python_executable(t_env.get_config())
    names = [*spec.feature_cols, spec.label_col]
    columns = dict(zip(*table_columns(table)))
    types = [columns[n].nullable() for n in names]
    fields = [lit(-1).cast(DataTypes.INT()).alias(RANK_MARKER),
              *[col(n).cast(t).alias(n) for n, t in zip(names, types)]]
    pad_fields = [DataTypes.FIELD(RANK_MARKER, DataTypes.INT()),
                  *[DataTypes.FIELD(n, t) for n, t in zip(names, types)]]
    if spec.window_ms is not None:  # the time attribute goes along: records keep event time
        rowtime_column = rowtime_field(table)
        assert rowtime_column is not None  # the estimator refuses window_ms without event time
        rowtime, rowtime_type = rowtime_column
        fields.append(col(rowtime).alias(EVENT_TIME))
        pad_fields.append(DataTypes.FIELD(EVENT_TIME, rowtime_type))
    selected = table.select(*fields)
    pads = t_env.from_elements([(r, *[None] * (len(pad_fields) - 1))
                                for r in range(spec.world_size)], DataTypes.ROW(pad_fields))
    stream = planned(t_env, lambda: t_env.to_data_stream(selected.union_all(pads)))
    keys = stream_shard_keys(spec.world_size)
    with shipped_by_value(spec.model, spec.loss, spec.optimizer_creator):
        versions = (stream.key_by(ShardSelector(keys), key_type=Types.INT())
                    .process(OnlineTrainer(spec), output_type=version_row_type(version_col))
                    .name("flink-torch-ml online trainer")
                    .set_parallelism(spec.world_size)
                    .set_max_parallelism(MAX_PARALLELISM))
    return t_env.from_data_stream(versions)


def rowtime_field(table: Table) -> Optional[Tuple[str, DataType]]:
    """``table``'s event-time attribute (a column with a WATERMARK) as (name, type for the
    pads' column: same kind and precision, as Python types would lose the precision and only
    TIMESTAMP_LTZ(3) converts to a DataStream), or None without one."""
    from pyflink.java_gateway import get_gateway

    checks = get_gateway().jvm.org.apache.flink.table.types.logical.utils.LogicalTypeChecks
    for column in table._j_table.getResolvedSchema().getColumns():
        logical = column.getDataType().getLogicalType()
        if checks.isRowtimeAttribute(logical):
            precision = logical.getPrecision()
            if logical.getTypeRoot().name() == "TIMESTAMP_WITH_LOCAL_TIME_ZONE":
                return column.getName(), DataTypes.TIMESTAMP_LTZ(precision)
            return column.getName(), DataTypes.TIMESTAMP(precision)
    return None
