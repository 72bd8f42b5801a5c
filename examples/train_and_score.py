"""Train a PyTorch classifier inside a Flink job, then score batch and streaming tables.

1. A Flink table of 2-D points labelled "inside the unit circle or not".
2. PyTorchEstimator trains an MLP with 2 DistributedDataParallel workers *inside* the Flink
   job (each worker a Flink subtask with its own shard), holding out 20% for validation.
3. The fitted PyTorchModel is saved as ONNX, loaded back, and scores a streaming datagen
   table; Flink SQL computes the accuracy.

Run: python examples/train_and_score.py      (or `make demo`)
"""

import os
import sys
import tempfile

import numpy as np
import torch
from pyflink.table import DataTypes
from pyflink.table.expressions import col, lit
from torch import nn

from flink_torch_ml import PyTorchEstimator, PyTorchModel, create_table_environment


class CircleMLP(nn.Module):
    """forward(x1 [b,1], x2 [b,1]) -> class logits [b,2]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, 2))

    def forward(self, x1, x2):
        return self.net(torch.cat([x1, x2], dim=1))


def adam(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=0.01)


def main(t_env=None, rows: int = 4000, epochs: int = 15) -> dict:
    t_env = t_env or create_table_environment("streaming", parallelism=2)
    points = np.random.default_rng(0).uniform(-1.5, 1.5, size=(rows, 2))
    labelled = t_env.from_elements(
        [(float(a), float(b), int(a * a + b * b < 1)) for a, b in points],
        DataTypes.ROW([DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                       DataTypes.FIELD("x2", DataTypes.DOUBLE()),
                       DataTypes.FIELD("label", DataTypes.BIGINT())]))

    estimator = PyTorchEstimator(CircleMLP(), nn.CrossEntropyLoss(), adam,
                                 feature_cols=["x1", "x2"], label_col="label",
                                 prediction_col="logits", max_epochs=epochs, batch_size=64,
                                 worker_num=2, validation=0.2, metrics=["accuracy"],
                                 verbose=True)
    model = estimator.fit(labelled)
    last = model.history[-1]
    print(f"trained: train_loss {last['train_loss']:.4f}, valid_accuracy "
          f"{last['valid_accuracy']:.3f} on {last['valid_rows']} held-out rows")

    path = os.path.join(tempfile.mkdtemp(prefix="flink-torch-ml-"), "circle")
    model.save(path, format="onnx")
    loaded = PyTorchModel.load(t_env, path)

    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS stream_points")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE stream_points (x1 DOUBLE, x2 DOUBLE) WITH (
          'connector' = 'datagen', 'number-of-rows' = '{rows}', 'rows-per-second' = '100000',
          'fields.x1.min' = '-1.5', 'fields.x1.max' = '1.5',
          'fields.x2.min' = '-1.5', 'fields.x2.max' = '1.5')""")
    scored = loaded.transform(t_env.from_path("stream_points"))[0]
    inside = scored.select(col("x1"), col("x2"), (col("logits").at(lit(2)) >
                                                   col("logits").at(lit(1))).alias("inside"))
    frame = inside.to_pandas()
    accuracy = float(((frame.x1 ** 2 + frame.x2 ** 2 < 1) == frame.inside).mean())
    print(f"scored {len(frame)} streaming rows with the loaded ONNX model: accuracy "
          f"{accuracy:.3f}")
    return {"valid_accuracy": last["valid_accuracy"], "stream_accuracy": accuracy,
            "history": model.history, "stream_rows": len(frame)}


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["stream_accuracy"] > 0.9 else 1)
