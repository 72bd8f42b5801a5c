"""Scoring for DataStream API users.

A Python ``MapFunction`` sees one element at a time, so it cannot feed a model whole batches.
``score_data_stream`` instead routes the stream through the Table API, where Flink bundles
elements into Arrow batches for the same vectorized UDF ``PyTorchModel.transform`` uses (the
model is loaded once per worker in ``open()`` and released in ``close()``), and returns a
DataStream again. ``python.fn-execution.bundle.size`` / ``bundle.time`` bound how many elements
wait for a batch and for how long (latency vs throughput).
"""

from typing import Optional, Union

from pyflink.datastream import DataStream
from pyflink.table import StreamTableEnvironment

from .model import PyTorchModel

__all__ = ["score_data_stream"]


def score_data_stream(data_stream: DataStream, model: Union[PyTorchModel, str],
                      t_env: Optional[StreamTableEnvironment] = None) -> DataStream:
    """A DataStream of Rows: each input Row's fields plus the model's prediction field.

    ``data_stream`` must carry named Rows (``output_type=Types.ROW_NAMED(...)``) holding the
    model's feature fields; ``model`` is a PyTorchModel or the path of a saved one."""
    if t_env is None:
        t_env = StreamTableEnvironment.create(data_stream.get_execution_environment())
    if isinstance(model, str):
        model = PyTorchModel.load(t_env, model)
    if not isinstance(model, PyTorchModel):
        raise TypeError(f"model must be a PyTorchModel or the path of a saved one, got "
                        f"{type(model).__name__}")
    scored = model.transform(t_env.from_data_stream(data_stream))[0]
    return t_env.to_data_stream(scored)
