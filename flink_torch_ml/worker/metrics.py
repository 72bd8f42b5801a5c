"""Flink metrics reported from the library's functions inside Python workers.

Everything is registered under the group ``flink_torch_ml`` of the operator's scope, so it
shows in Flink's web UI, REST API and metric reporters next to Flink's own metrics. Flink
reads a Python worker's metrics at the end of each bundle (``python.fn-execution.bundle.time``,
1 s by default), so a metric moves while rows flow through the function."""

from typing import Any, Optional

__all__ = ["METRIC_GROUP", "metric_group"]

#: the metric group every metric of the library is registered under
METRIC_GROUP = "flink_torch_ml"


def metric_group(function_context: Any) -> Optional[Any]:
    """The subtask's ``flink_torch_ml`` metric group, or None where Flink's
    ``python.metric.enabled`` is false (or there is no function context)."""
    if function_context is None:
        return None
    # a Table API FunctionContext says get_metric_group, a DataStream RuntimeContext
    # get_metrics_group
    getter = getattr(function_context, "get_metric_group", None) or \
        getattr(function_context, "get_metrics_group", None)
    try:
        group = getter() if getter is not None else None
    except RuntimeError:
        return None
    return group.add_group(METRIC_GROUP) if group is not None else None
