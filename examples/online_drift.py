"""Online training on a stream whose label rule changes halfway (concept drift).

1. A rate-limited stream of points (x1, x2) in [-1, 1]^2 with a sequence id. Before the drift
   the label is ``x1 > x2``; from row ``rows / 2`` on it is ``x1 + x2 > 0`` (the boundary
   turns by 90 degrees: the pre-drift model is right on half of the post-drift rows).
2. ``OnlinePyTorchEstimator`` trains an MLP on the stream with 2 ranks inside the Flink job,
   one optimizer step (and one model version) every ``global_batch_size`` rows.
3. In the same job, every row is scored with the newest version received (FlinkML's online
   contract) and, for comparison, by a model trained once, with ``PyTorchEstimator``, on data
   drawn before the drift.
4. Per model version: rows scored, the online model's accuracy on them, the static model's.
   The online model recovers after the drift; the static one cannot.

Run: python examples/online_drift.py
"""

import sys

import numpy as np
import pandas as pd
import torch
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import (OnlinePyTorchEstimator, PyTorchEstimator,
                            create_table_environment)


class PointMLP(nn.Module):
    """forward(x1 [b,1], x2 [b,1]) -> one logit [b,1]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x1, x2):
        return self.net(torch.cat([x1, x2], dim=1))


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    """Plain SGD with a large step: it forgets the old rule fast (Adam's momentum, built up
    before the drift, slows recovery several-fold on this stream)."""
    return torch.optim.SGD(model.parameters(), lr=1.0)


def before_drift(x1, x2):
    return x1 > x2


def after_drift(x1, x2):
    return x1 + x2 > 0


def static_model(t_env, rows: int = 4000):
    """A model trained once, in batch, on data drawn before the drift."""
    points = np.random.default_rng(1).uniform(-1, 1, size=(rows, 2))
    table = t_env.from_elements(
        [(float(a), float(b), float(before_drift(a, b))) for a, b in points],
        DataTypes.ROW([DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                       DataTypes.FIELD("x2", DataTypes.DOUBLE()),
                       DataTypes.FIELD("label", DataTypes.DOUBLE())]))
    torch.manual_seed(1)
    estimator = PyTorchEstimator(PointMLP(), nn.BCEWithLogitsLoss(), sgd,
                                 feature_cols=["x1", "x2"], label_col="label",
                                 prediction_col="static_logit", max_epochs=10, batch_size=64,
                                 worker_num=2)
    return estimator.fit(table)


def run(t_env=None, rows: int = 16_000, rate: int = 1_000, global_batch_size: int = 200,
        workers: int = 2) -> pd.DataFrame:
    """Run the drifting stream through online training and scoring; one summary row per
    model version: ``rows``, ``after_drift`` (fraction of its rows), ``online_accuracy``,
    ``static_accuracy``."""
    t_env = t_env or create_table_environment("streaming", parallelism=2)
    static = static_model(t_env)
    half = rows // 2
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE points (id BIGINT, x1 DOUBLE, x2 DOUBLE) WITH (
          'connector' = 'datagen', 'scan.parallelism' = '1', 'rows-per-second' = '{rate}',
          'fields.id.kind' = 'sequence', 'fields.id.start' = '0',
          'fields.id.end' = '{rows - 1}',
          'fields.x1.min' = '-1', 'fields.x1.max' = '1',
          'fields.x2.min' = '-1', 'fields.x2.max' = '1')""")
    stream = t_env.sql_query(f"""
        SELECT id, x1, x2, CAST(CASE WHEN id < {half} THEN (CASE WHEN x1 > x2 THEN 1 ELSE 0
                                                            END)
                                     ELSE (CASE WHEN x1 + x2 > 0 THEN 1 ELSE 0 END)
                                END AS DOUBLE) AS label
        FROM points""")
    torch.manual_seed(0)
    online = OnlinePyTorchEstimator(PointMLP(), nn.BCEWithLogitsLoss(), sgd,
                                    feature_cols=["x1", "x2"], label_col="label",
                                    prediction_col="online_logit",
                                    global_batch_size=global_batch_size,
                                    worker_num=workers).fit(stream)
    scored = static.transform(online.transform(stream)[0])[0]
    frame = scored.to_pandas()
    frame["online_right"] = (frame["online_logit"] > 0) == (frame["label"] > 0.5)
    frame["static_right"] = (frame["static_logit"] > 0) == (frame["label"] > 0.5)
    frame["after_drift"] = frame["id"] >= half
    summary = frame.groupby("modelVersion").agg(
        rows=("id", "size"), after_drift=("after_drift", "mean"),
        online_accuracy=("online_right", "mean"), static_accuracy=("static_right", "mean"))
    summary.attrs["scored_rows"] = len(frame)
    summary.attrs["drift_version"] = half // global_batch_size  # later ones saw the drift
    return summary


def versions_to_recover(summary: pd.DataFrame, threshold: float = 0.9,
                        min_rows: int = 100) -> int:
    """Updates on post-drift rows until a version scores post-drift rows with accuracy
    above ``threshold``: the first such version minus the last version trained only on
    pre-drift rows (-1 if it never recovers). Versions that scored fewer than ``min_rows``
    rows are too small a sample to count."""
    drift_version = summary.attrs["drift_version"]
    after = summary[(summary.index > drift_version) & (summary["after_drift"] > 0.5)
                    & (summary["rows"] >= min_rows) & (summary["online_accuracy"] >= threshold)]
    return int(after.index[0] - drift_version) if not after.empty else -1


def main(argv=None) -> pd.DataFrame:
    summary = run()
    with pd.option_context("display.max_rows", 200, "display.width", 120):
        print(summary.round(3).to_string())
    print(f"scored rows: {summary.attrs['scored_rows']}; the last version trained before the "
          f"drift: {summary.attrs['drift_version']}; updates on post-drift rows until the "
          f"online model scores above 90% accuracy again: {versions_to_recover(summary)}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
