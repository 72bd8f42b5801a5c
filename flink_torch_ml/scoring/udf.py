"""The vectorized pandas UDF that scores a table with a model.

Each Python worker loads the model once in ``open()`` from the bytes carried by the function,
then every Arrow batch is stacked into contiguous arrays and run through the model in one call.
Each subtask reports Flink metrics under the group ``flink_torch_ml`` (see ``ScoringMetrics``).
"""

import time
from functools import reduce
from typing import Optional

import pandas as pd
from pyflink.table import Table
from pyflink.table.expressions import col
from pyflink.table.udf import FunctionContext, ScalarFunction, udf

from ..runtime.metrics import metric_group
from ..runtime.orphan_guard import start_orphan_guard
from .batch import features_to_arrays, output_to_series
from .runner import ModelRunner
from .spec import ModelSpec

__all__ = ["PredictFunction", "ScoringMetrics", "predict_udf", "add_prediction_column"]


class ScoringMetrics:
    """The scoring UDF's Flink metrics, in the operator's scope under
    ``flink_torch_ml.format.<format>``: ``rowsScored`` (counter), ``rowsScoredPerSecond``
    (meter), ``batchesScored`` (counter), the model's time per batch as gauges
    ``lastBatchInferenceMicros``, ``meanBatchInferenceMicros`` and ``maxBatchInferenceMicros``
    (plain numbers, which every reporter and the REST API read), and ``modelVersion``."""

    def __init__(self, group, model_format: str, model_version: int):
        group = group.add_group("format", model_format)
        self.rows = group.counter("rowsScored")
        self.rate = group.meter("rowsScoredPerSecond", time_span_in_seconds=60)
        self.batches = group.counter("batchesScored")
        self.last_micros = self.max_micros = self.total_micros = self.count = 0
        group.gauge("lastBatchInferenceMicros", lambda: self.last_micros)
        group.gauge("meanBatchInferenceMicros",
                    lambda: self.total_micros // self.count if self.count else 0)
        group.gauge("maxBatchInferenceMicros", lambda: self.max_micros)
        group.gauge("modelVersion", lambda: model_version)

    def record(self, rows: int, seconds: float) -> None:
        micros = int(seconds * 1e6)
        self.rows.inc(rows)
        self.rate.mark_event(rows)
        self.batches.inc()
        self.last_micros = micros
        self.max_micros = max(self.max_micros, micros)
        self.total_micros += micros
        self.count += 1


class PredictFunction(ScalarFunction):
    """A pandas scalar function: feature Series in, prediction Series out."""

    def __init__(self, runner: ModelRunner, spec: ModelSpec, check_invalid: bool = True,
                 parallelism: Optional[int] = None, model_version: int = 0):
        self._runner = runner
        self._spec = spec
        self._check_invalid = check_invalid
        self._parallelism = parallelism
        self._model_version = model_version
        self._metrics: Optional[ScoringMetrics] = None

    def open(self, function_context: FunctionContext) -> None:
        start_orphan_guard()  # a killed TaskManager must not leave this process behind
        self._runner.open(self._parallelism)
        group = metric_group(function_context)
        if group is not None:
            self._metrics = ScoringMetrics(group, self._runner.model_format,
                                           self._model_version)

    def eval(self, *series: pd.Series) -> pd.Series:
        rows = len(series[0])
        arrays = features_to_arrays(series, self._spec, self._check_invalid)
        started = time.perf_counter()
        output = self._runner.predict(arrays)
        if self._metrics is not None:
            self._metrics.record(rows, time.perf_counter() - started)
        return output_to_series(output, rows, self._spec)

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
