"""Scoring that follows a model stream: the input rows connected with the broadcast
model-data rows (one per version) in a ``BroadcastProcessFunction``. Each row is scored with
the newest version received, and the version is appended; rows that arrive before the first
version (or, with ``max_allowed_model_delay_ms``, before a version recent enough for the
row's timestamp, as in FlinkML's online models) wait in the function and are scored as one
batch when that version arrives. Runs in Flink's Python workers.
"""

import json
import logging
import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
from pyflink.common import Row, Types
from pyflink.datastream import BroadcastProcessFunction
from pyflink.datastream.state import MapStateDescriptor
from pyflink.table import Table
from pyflink.table.expressions import col

from .._compat import table_columns
from ..core.types import DataType
from ..errors import InvalidDataError, ModelFormatError
from .metrics import metric_group
from .orphan_guard import start_orphan_guard
from ..client.planner import planned
from ..core.runner import ModelRunner
from ..core.spec import ModelSpec

__all__ = ["FollowModelStream", "follow_model_stream", "stream_type_of",
           "prediction_type_info", "MODEL_DATA_FIELDS"]

#: the model-data columns scoring reads, after the version column
MODEL_DATA_FIELDS = ("versionTime", "format", "model", "spec")

log = logging.getLogger("flink_torch_ml")

_TYPE_INFO = {
    DataType.FLOAT_32: Types.FLOAT, DataType.FLOAT_64: Types.DOUBLE,
    DataType.INT_32: Types.INT, DataType.INT_64: Types.LONG,
}


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


class FollowModelStream(BroadcastProcessFunction):
    """Input rows (first input) scored with the newest model-data row (broadcast input):
    ``(version, versionTime, format, model, spec)``."""

    def __init__(self, spec: ModelSpec, positions: Sequence[int],
                 max_delay_ms: Optional[int], skip_invalid: bool, num_threads: int,
                 parallelism: int):
        self._spec = spec
        self._positions = list(positions)
        self._max_delay_ms = max_delay_ms
        self._skip_invalid = skip_invalid
        self._num_threads = num_threads
        self._parallelism = parallelism

    def open(self, runtime_context) -> None:
        start_orphan_guard()
        self._runner: Optional[ModelRunner] = None
        self._version = -1
        self._model_time = -1
        self._waiting: List[Tuple[Any, Optional[int]]] = []
        self._state_checked = False
        self._skipped = 0
        self._scored = 0
        group = metric_group(runtime_context)
        if group is not None:
            group.gauge("modelVersion", lambda: self._version)
            group.gauge("rowsWaitingForModel", lambda: len(self._waiting))
            group.gauge("rowsSkippedInvalid", lambda: self._skipped)
            group.gauge("rowsScored", lambda: self._scored)

    def close(self) -> None:
        """Rows still waiting when the job ends are lost. Flink ignores an error raised here
        (measured: the job still succeeds), so the loss is logged as an error, and the
        ``rowsWaitingForModel`` gauge shows it while the job runs."""
        if self._waiting:
            waiting, self._waiting = len(self._waiting), []
            newest = f"the newest was version {self._version}" if self._version >= 0 else \
                "none arrived"
            log.error("flink-torch-ml: %d rows were never scored: the job ended before a model "
                      "version %sarrived (%s); check that the model-data table holds versions",
                      waiting, "recent enough for them " if self._version >= 0 else "", newest)

    # ------------------------------------------------------------------ inputs
    def process_element(self, value, ctx):
        if not self._valid(value):
            return
        if self._runner is None and not self._state_checked:
            self._state_checked = True
            self._restore(ctx)
        timestamp = ctx.timestamp()
        if self._runner is not None and self._fresh(timestamp):
            yield from self._score([value])
        else:
            self._waiting.append((value, timestamp))

    def process_broadcast_element(self, value, ctx):
        version, version_time, model_format, model_bytes, spec_text = value[:5]
        if version is None or int(version) <= self._version:
            return  # an older version arriving late never replaces a newer one
        self._load(value)
        ctx.get_broadcast_state(MODEL_STATE).put("model", _encode(value))
        if self._waiting:
            ready = [v for v, t in self._waiting if self._fresh(t)]
            self._waiting = [(v, t) for v, t in self._waiting if not self._fresh(t)]
            if ready:
                yield from self._score(ready)

    def _restore(self, ctx) -> None:
        """After a restart: the newest version from the checkpointed broadcast state."""
        stored = ctx.get_broadcast_state(MODEL_STATE).get("model")
        if stored is not None:
            self._load(_decode(bytes(stored)))

    def _load(self, value) -> None:
        version, version_time, model_format, model_bytes, spec_text = value[:5]
        input_names = self._check_spec(int(version), spec_text)
        runner = ModelRunner(model_format, bytes(model_bytes), input_names, self._num_threads)
        try:
            runner.open(self._parallelism)
        except Exception as error:
            raise ModelFormatError(f"Model version {version} cannot be loaded as "
                                   f"{model_format}: {error}") from error
        self._runner, self._version = runner, int(version)
        self._model_time = int(version_time) if version_time is not None else -1

    # ------------------------------------------------------------------ helpers
    def _fresh(self, timestamp: Optional[int]) -> bool:
        """FlinkML's rule: a row with event time t needs a model no older than
        t - max_allowed_model_delay_ms; without the param (or event time) any version."""
        if self._max_delay_ms is None or timestamp is None:
            return True
        return self._model_time >= timestamp - self._max_delay_ms

    def _valid(self, value) -> bool:
        for position, feature in zip(self._positions, self._spec.features):
            item = value[position]
            bad = item is None or (isinstance(item, float) and math.isnan(item)) or \
                (feature.data_type.is_array and (len(item) != feature.width or any(
                    x is None or (isinstance(x, float) and math.isnan(x)) for x in item)))
            if bad:
                if self._skip_invalid:
                    self._skipped += 1
                    return False
                what = "a NULL or NaN" if item is None or not feature.data_type.is_array else \
                    f"an array of length {len(item)} or holding NULL/NaN (expected " \
                    f"{feature.width} numbers)"
                raise InvalidDataError(f"Feature column {feature.name!r} holds {what} value; "
                                       f"filter such rows or set handle_invalid='skip'")
        return True

    def _check_spec(self, version: int, spec_text: Optional[str]) -> List[str]:
        """The version's model input names, after checking it fits this job's features."""
        if not spec_text:
            return self._spec.feature_cols
        try:
            data = json.loads(spec_text)
            theirs = ModelSpec.from_json(data)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelFormatError(f"Model version {version} has a corrupt spec: "
                                   f"{error}") from None
        mine = self._spec
        if [f.width for f in theirs.features] != [f.width for f in mine.features] or \
                theirs.output_width != mine.output_width:
            raise ModelFormatError(
                f"Model version {version} takes features of widths "
                f"{[f.width for f in theirs.features]} and returns {theirs.output_width} "
                f"values, but this scoring job was built for "
                f"{[f.width for f in mine.features]} -> {mine.output_width}")
        return list(data.get("input_names") or theirs.feature_cols)

    def _score(self, rows: List[Any]):
        arrays = []
        for position, feature in zip(self._positions, self._spec.features):
            column = np.asarray([r[position] for r in rows], dtype=feature.input_dtype)
            arrays.append(column.reshape(len(rows), feature.width))
        output = np.asarray(self._runner.predict(arrays))
        prediction_type = self._spec.prediction_type
        if prediction_type.is_array:
            values = output.reshape(len(rows), -1).astype(prediction_type.numpy_dtype).tolist()
        else:
            values = output.reshape(len(rows), -1)[:, 0].astype(
                prediction_type.numpy_dtype).tolist()
        self._scored += len(rows)
        for row, prediction in zip(rows, values):
            yield Row(*row, prediction, self._version)


#: the broadcast state holding the newest version (so a restarted job scores at once)
MODEL_STATE = MapStateDescriptor("ftm_model", Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()))


def _encode(value) -> bytes:
    """A model-data row as bytes for the broadcast state: a JSON header line, then the
    model bytes (nothing pickled)."""
    version, version_time, model_format, model_bytes, spec_text = value[:5]
    header = json.dumps({"version": int(version), "time": version_time,
                         "format": model_format, "spec": spec_text})
    return header.encode("utf-8") + b"\n" + bytes(model_bytes)


def _decode(data: bytes) -> tuple:
    end = data.index(b"\n")
    header = json.loads(data[:end].decode("utf-8"))
    return (header["version"], header["time"], header["format"], data[end + 1:],
            header["spec"])


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
