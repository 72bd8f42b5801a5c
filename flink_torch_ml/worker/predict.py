"""The vectorized pandas UDF that scores a table with a model.

Each Python worker loads the model once in ``open()`` from the bytes carried by the function,
then every Arrow batch is stacked into contiguous arrays and run through the model in one call.
Each subtask reports Flink metrics under the group ``flink_torch_ml`` (see ``ScoringMetrics``).
"""

import time
from typing import Optional

import numpy as np
import pandas as pd
from pyflink.table.udf import FunctionContext, ScalarFunction

from ..core.rows import SCORING_ADVICE, check_rows, feature_arrays, invalid_rows
from ..core.runner import ModelRunner, prediction_values
from ..core.spec import ModelSpec
from ..errors import InvalidDataError, SchemaError
from .metrics import metric_group
from .orphan_guard import in_python_worker, start_orphan_guard

__all__ = ["PredictFunction", "ScoringMetrics", "prediction_series", "spread_output"]


class ScoringMetrics:
    """The scoring UDF's Flink metrics, in the operator's scope under
    ``flink_torch_ml.format.<format>``: ``rowsScored`` (counter), ``rowsScoredPerSecond``
    (meter), ``batchesScored`` (counter), the model's time per batch as gauges
    ``lastBatchInferenceMicros``, ``meanBatchInferenceMicros`` and ``maxBatchInferenceMicros``
    (plain numbers, which every reporter and the REST API read), ``modelVersion``, and
    ``rowsSkippedInvalid`` (counter: rows ``handle_invalid='skip'`` dropped)."""

    def __init__(self, group, model_format: str, model_version: int):
        group = group.add_group("format", model_format)
        self.rows = group.counter("rowsScored")
        self.rate = group.meter("rowsScoredPerSecond", time_span_in_seconds=60)
        self.batches = group.counter("batchesScored")
        self.skipped = group.counter("rowsSkippedInvalid")
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
        self._skip_invalid = not check_invalid  # False: fail on invalid rows, naming the column
        self._parallelism = parallelism
        self._model_version = model_version
        self._metrics: Optional[ScoringMetrics] = None

    def open(self, function_context: FunctionContext) -> None:
        start_orphan_guard()  # a killed TaskManager must not leave this process behind
        self._runner.open(self._parallelism, in_python_worker())
        group = metric_group(function_context)
        if group is not None:
            self._metrics = ScoringMetrics(group, self._runner.model_format,
                                           self._model_version)

    def eval(self, *series: pd.Series) -> pd.Series:
        features = self._spec.features
        if len(series) != len(features):  # a SQL call with the wrong number of arguments
            raise SchemaError(f"The model scores {len(features)} feature(s) "
                              f"({', '.join(f.name for f in features)}, in this order) but "
                              f"its function was called with {len(series)} argument(s)")
        rows = len(series[0])
        keep = None
        if self._skip_invalid:  # score the valid rows; the others get NULL, dropped by Flink
            bad = invalid_rows(series, features)
            if bad.any():
                keep = ~bad
                series = tuple(s[keep].reset_index(drop=True) for s in series)
                if self._metrics is not None:
                    self._metrics.skipped.inc(int(bad.sum()))
        else:
            check_rows(series, features, SCORING_ADVICE)
        scored = len(series[0])
        if not scored:
            return pd.Series([None] * rows, dtype=object)
        arrays = feature_arrays(series, features)
        started = time.perf_counter()
        output = self._runner.predict(arrays)
        if self._metrics is not None:
            self._metrics.record(scored, time.perf_counter() - started)
        result = prediction_series(prediction_values(output, scored, self._spec), self._spec)
        if self._skip_invalid:
            _refuse_nan_predictions(result)
        return result if keep is None else spread_output(result, keep)

    def close(self) -> None:
        self._runner.close()


def _refuse_nan_predictions(result: pd.Series) -> None:
    """With handle_invalid='skip' Flink drops the rows whose prediction is NULL, and NaN
    becomes NULL: a NaN the model computed from valid features must not vanish silently."""
    if result.dtype.kind == "f":
        nan = int(result.isna().sum())
        if nan:
            raise InvalidDataError(
                f"The model returned NaN for {nan} of {len(result)} rows whose features are "
                f"valid; with handle_invalid='skip' such rows would be dropped unseen (Flink "
                f"reads NaN as NULL). Fix the model, or use handle_invalid='error', which "
                f"keeps them with a NULL prediction")


def prediction_series(values: np.ndarray, spec: ModelSpec) -> pd.Series:
    """Prediction values (core.runner.prediction_values) as the UDF's result column."""
    return pd.Series(list(values)) if spec.prediction_type.is_array else pd.Series(values)


def spread_output(valid: pd.Series, keep: np.ndarray) -> pd.Series:
    """A result column for every row of a batch from the results of its ``keep`` rows: the
    others get NULL (Flink then drops them)."""
    if valid.dtype.kind == "f":  # NaN is NULL to Flink's Arrow conversion
        full = np.full(len(keep), np.nan, dtype=valid.dtype)
        full[keep] = valid.to_numpy()
        return pd.Series(full)
    full = np.full(len(keep), None, dtype=object)
    full[np.flatnonzero(keep)] = valid.to_numpy(dtype=object)
    return pd.Series(full, dtype=object)
