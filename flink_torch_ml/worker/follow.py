"""Scoring that follows a model stream: the input rows connected with the broadcast
model-data rows (one per version) in a ``BroadcastProcessFunction``. Each row is scored with
the newest version received, and the version is appended; rows that arrive before the first
version (or, with ``max_allowed_model_delay_ms``, before a version recent enough for the
row's timestamp, as in FlinkML's online models) wait in the function and are scored as one
batch when that version arrives. Runs in Flink's Python workers (the job around it is
``client/scoring_job.py``).
"""

import json
import logging
from typing import Any, List, Optional, Sequence, Tuple

from pyflink.common import Row, Types
from pyflink.datastream import BroadcastProcessFunction
from pyflink.datastream.state import MapStateDescriptor

from ..core.rows import SCORING_ADVICE, check_rows, feature_arrays, invalid_rows, \
    rows_to_columns
from ..core.runner import ModelRunner, prediction_values
from ..core.spec import ModelSpec
from ..errors import ModelFormatError
from .metrics import metric_group
from .orphan_guard import in_python_worker, start_orphan_guard

__all__ = ["FollowModelStream", "MODEL_DATA_FIELDS", "MODEL_STATE"]

#: the model-data columns scoring reads, after the version column
MODEL_DATA_FIELDS = ("versionTime", "format", "model", "spec")

log = logging.getLogger("flink_torch_ml")


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
            runner.open(self._parallelism, in_python_worker())
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
        """The row rule on one row: True to score it; False when it is invalid and skipped
        (counted); raises InvalidDataError naming the column otherwise."""
        columns = rows_to_columns([value], self._positions)
        features = self._spec.features
        if not invalid_rows(columns, features).any():
            return True
        if self._skip_invalid:
            self._skipped += 1
            return False
        check_rows(columns, features, SCORING_ADVICE)
        return True  # pragma: no cover - check_rows raised

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
        arrays = feature_arrays(rows_to_columns(rows, self._positions), self._spec.features)
        runner = self._runner
        assert runner is not None  # rows are scored only once a version is loaded
        values = prediction_values(runner.predict(arrays), len(rows), self._spec)
        self._scored += len(rows)
        for row, prediction in zip(rows, values.tolist()):
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
