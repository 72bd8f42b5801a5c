"""Scoring for DataStream API users, two ways.

``score_data_stream`` routes a stream of Rows through the Table API, where Flink bundles
elements into Arrow batches for the same vectorized UDF ``PyTorchModel.transform`` uses, and
returns a DataStream again (``python.fn-execution.bundle.size`` / ``bundle.time`` trade
latency for throughput). ``ModelMapFunction`` is the seed demo's RichMapFunction: a
``MapFunction`` for ``stream.map(...)`` that loads the model in ``open()`` and releases it in
``close()``; it runs one model call per element, and an element that is a sequence of values
(the AddFive demo's variable-length tensor) is one batch.
"""

from typing import Any, List, Optional, Union

import numpy as np
from pyflink.common import Row
from pyflink.datastream import DataStream, MapFunction, RuntimeContext
from pyflink.table import StreamTableEnvironment

from .core.rows import check_rows, feature_arrays
from .core.runner import prediction_values
from .errors import SchemaError
from .model import PyTorchModel
from .worker.orphan_guard import in_python_worker, start_orphan_guard
from .client.planner import planned

__all__ = ["score_data_stream", "ModelMapFunction"]


def score_data_stream(data_stream: DataStream, model: Union[PyTorchModel, str],
                      t_env: Optional[StreamTableEnvironment] = None,
                      trusted: Optional[bool] = None) -> DataStream:
    """A DataStream of Rows: each input Row's fields plus the model's prediction field.

    ``data_stream`` must carry named Rows (``output_type=Types.ROW_NAMED(...)``) holding the
    model's feature fields; ``model`` is a PyTorchModel or the path of a saved one (loaded
    with ``trusted`` as in ``PyTorchModel.load``)."""
    if t_env is None:
        t_env = StreamTableEnvironment.create(data_stream.get_execution_environment())
    model = _as_model(model, t_env, trusted)
    scored = model.transform(t_env.from_data_stream(data_stream))[0]
    return planned(t_env, lambda: t_env.to_data_stream(scored))


def _as_model(model: Union[PyTorchModel, str], t_env,
              trusted: Optional[bool] = None) -> PyTorchModel:
    """A PyTorchModel, loading it when given the path of a saved one (``trusted`` as in
    ``PyTorchModel.load``)."""
    if isinstance(model, str):
        model = PyTorchModel.load(t_env, model, trusted)
    if not isinstance(model, PyTorchModel):
        raise TypeError(f"model must be a PyTorchModel or the path of a saved one, got "
                        f"{type(model).__name__}")
    return model


class ModelMapFunction(MapFunction):
    """``stream.map(ModelMapFunction(path_or_model), output_type=...)``: scores each element
    with a saved model (TorchScript or ONNX bytes carried in the function; loaded once per
    worker in ``open()``, released in ``close()``).

    An element is scored as: a ``Row`` -> the Row plus the prediction field (features read
    by name when the Row is named, else by position); for a one-feature model, a number -> a
    number, and a list/array of numbers -> a list of predictions, scored as one batch (for
    an array feature of width n, a list of n numbers is one row and a list of lists a batch).
    NULL/NaN features or wrong array lengths raise ``InvalidDataError`` naming the feature."""

    def __init__(self, model: Union[PyTorchModel, str], trusted: Optional[bool] = None):
        self._spec, self._runner = _as_model(model, None, trusted)._scoring_parts()

    def open(self, runtime_context: RuntimeContext) -> None:
        start_orphan_guard()
        self._runner.open(runtime_context.get_number_of_parallel_subtasks(),
                          in_python_worker())

    def close(self) -> None:
        self._runner.close()

    def map(self, value: Any) -> Any:
        features = self._spec.features
        if isinstance(value, Row):
            return self._map_row(value)
        if len(features) != 1:
            raise TypeError(f"This model has {len(features)} features "
                            f"{self._spec.feature_cols}; pass Rows holding them")
        feature = features[0]
        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
            is_batch = not feature.data_type.is_array or \
                (len(items) > 0 and isinstance(items[0], (list, tuple, np.ndarray)))
            if is_batch:
                return self._predict([items])
        return self._predict([[value]])[0]

    def _map_row(self, row: Row) -> Row:
        names = self._spec.feature_cols
        fields = row.as_dict() if getattr(row, "_fields", None) else None
        if fields is not None:
            missing = [n for n in names if n not in fields]
            if missing:
                raise SchemaError(f"The Row has no field(s) {missing}; it has {list(fields)} "
                                  f"and the model reads {names}")
            values = [fields[n] for n in names]
        else:
            if len(row) < len(names):
                raise SchemaError(f"The Row has {len(row)} fields; the model reads "
                                  f"{len(names)} ({names}) by position")
            values = list(row)[:len(names)]
        prediction = self._predict([[v] for v in values])[0]
        if fields is not None:
            return Row(**fields, **{self._spec.prediction_col: prediction})
        return Row(*row, prediction)

    def _predict(self, columns: List[List[Any]]) -> List[Any]:
        rows = len(columns[0])
        if rows == 0:
            return []
        features = self._spec.features
        check_rows(columns, features, "filter such elements before scoring")
        output = self._runner.predict(feature_arrays(columns, features))
        return prediction_values(output, rows, self._spec).tolist()
