"""The vectorized pandas UDF that scores a table with a model.

Each Python worker loads the model once in ``open()`` from the bytes carried by the function,
then every Arrow batch is stacked into contiguous arrays and run through the model in one call.
"""

from functools import reduce
from typing import Optional

import pandas as pd
from pyflink.table import Table
from pyflink.table.expressions import col
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from ..runtime.orphan_guard import start_orphan_guard
from .batch import features_to_arrays, output_to_series
from .runner import ModelRunner
from .spec import ModelSpec

__all__ = ["PredictFunction", "predict_udf", "add_prediction_column"]


class PredictFunction(ScalarFunction):
    """A pandas scalar function: feature Series in, prediction Series out."""

    def __init__(self, runner: ModelRunner, spec: ModelSpec, check_invalid: bool = True,
                 parallelism: Optional[int] = None):
        self._runner = runner
        self._spec = spec
        self._check_invalid = check_invalid
        self._parallelism = parallelism

    def open(self, function_context: FunctionContext) -> None:
        start_orphan_guard()  # a killed TaskManager must not leave this process behind
        self._runner.open(self._parallelism)

    def eval(self, *series: pd.Series) -> pd.Series:
        rows = len(series[0])
        arrays = features_to_arrays(series, self._spec, self._check_invalid)
        return output_to_series(self._runner.predict(arrays), rows, self._spec)

    def close(self) -> None:
        self._runner.close()


def predict_udf(runner: ModelRunner, spec: ModelSpec, check_invalid: bool = True,
                parallelism: Optional[int] = None):
    """The Flink UDF object scoring ``spec.features`` columns into ``spec.prediction_type``."""
    return udf(PredictFunction(runner, spec, check_invalid, parallelism),
               result_type=spec.prediction_type.to_flink(), func_type="pandas")


def add_prediction_column(table: Table, runner: ModelRunner, spec: ModelSpec,
                          handle_invalid: str = "error",
                          parallelism: Optional[int] = None) -> Table:
    """``table`` plus the prediction column; with ``handle_invalid='skip'`` rows holding a NULL
    feature are dropped first (in Flink, before they reach Python)."""
    if handle_invalid == "skip":
        table = table.filter(reduce(lambda a, b: a & b,
                                    [col(c).is_not_null for c in spec.feature_cols]))
    function = predict_udf(runner, spec, handle_invalid == "error", parallelism)
    prediction = function(*[col(c) for c in spec.feature_cols]).alias(spec.prediction_col)
    return table.add_columns(prediction)
