"""The Flink jobs that score, defined in the client: a table plus a prediction column from the
vectorized UDF (``worker/predict.py``), and a table scored while it follows a model stream
(``worker/follow.py``)."""

from typing import Optional

from pyflink.common import Types
from pyflink.table import Table
from pyflink.table.expressions import col
from pyflink.table.udf import udf

from .._compat import table_columns
from ..core.runner import ModelRunner
from ..core.spec import ModelSpec
from ..core.types import DataType
from ..worker.follow import MODEL_DATA_FIELDS, MODEL_STATE, FollowModelStream
from ..worker.predict import PredictFunction
from .planner import planned
from .schema import flink_type

__all__ = ["predict_udf", "add_prediction_column", "follow_model_stream",
           "prediction_type_info", "stream_type_of"]

_TYPE_INFO = {
    DataType.FLOAT_32: Types.FLOAT, DataType.FLOAT_64: Types.DOUBLE,
    DataType.INT_32: Types.INT, DataType.INT_64: Types.LONG,
}


def predict_udf(runner: ModelRunner, spec: ModelSpec, check_invalid: bool = True,
                parallelism: Optional[int] = None):
    """The Flink UDF object scoring ``spec.features`` columns into ``spec.prediction_type``."""
    return udf(PredictFunction(runner, spec, check_invalid, parallelism),
               result_type=flink_type(spec.prediction_type), func_type="pandas")


def add_prediction_column(table: Table, runner: ModelRunner, spec: ModelSpec,
                          handle_invalid: str = "error",
                          parallelism: Optional[int] = None) -> Table:
    """``table`` plus the prediction column; with ``handle_invalid='skip'`` the UDF leaves
    rows that break the row rule (core.rows) unscored and counts them (metric
    ``rowsSkippedInvalid``), and Flink drops them after it."""
    function = predict_udf(runner, spec, handle_invalid == "error", parallelism)
    prediction = function(*[col(c) for c in spec.feature_cols]).alias(spec.prediction_col)
    scored = table.add_columns(prediction)
    if handle_invalid == "skip":
        scored = scored.filter(col(spec.prediction_col).is_not_null)
    return scored


def prediction_type_info(data_type: DataType):
    """The DataStream type of a prediction column."""
    if data_type.is_array:
        element = DataType.from_numpy(data_type.numpy_dtype, False)
        return Types.BASIC_ARRAY(_TYPE_INFO[element]())
    return _TYPE_INFO[data_type]()


def stream_type_of(stream):
    """The Row type (names and field types) of a DataStream made from a table."""
    type_info = stream.get_type()
    return getattr(type_info, "_type_info", type_info)


def follow_model_stream(table: Table, model_data: Table, spec: ModelSpec, version_col: str,
                        max_delay_ms: Optional[int], skip_invalid: bool,
                        num_threads: int = 0) -> Table:
    """``table`` plus the prediction and version columns, each row scored with the newest
    model version of ``model_data`` (lazily: runs when the result is executed)."""
    t_env = table._t_env
    names, _ = table_columns(table)
    positions = [names.index(c) for c in spec.feature_cols]
    stream = planned(t_env, lambda: t_env.to_data_stream(table))
    versions = model_data.select(col(version_col), *[col(c) for c in MODEL_DATA_FIELDS])
    models = planned(t_env, lambda: t_env.to_data_stream(versions))
    row_type = stream_type_of(stream)
    output_type = Types.ROW_NAMED(
        [*row_type.get_field_names(), spec.prediction_col, version_col],
        [*row_type.get_field_types(), prediction_type_info(spec.prediction_type),
         Types.LONG()])
    parallelism = int(t_env.get_config().get("parallelism.default", "1") or 1)
    scored = stream.connect(models.broadcast(MODEL_STATE)).process(
        FollowModelStream(spec, positions, max_delay_ms, skip_invalid, num_threads,
                          max(parallelism, 1)), output_type=output_type)
    return t_env.from_data_stream(scored.name("flink-torch-ml follow model stream"))
