"""Score a Flink table with a PyTorch model: the inference half of flink-torch-ml, end to end.

1. A classifier is trained in plain PyTorch (as you would anywhere else) on a synthetic task:
   is the point (x1, x2) inside the unit circle?
2. It is wrapped in a PyTorchModel, saved as ONNX, and loaded back (no Python class needed).
3. The loaded model scores a batch table (with an array column of class probabilities), and a
   streaming table from Flink's datagen connector; Flink SQL computes the accuracy.

Run: python examples/score_table.py        (or `make demo`)
"""

import os
import sys
import tempfile
from typing import Optional

import torch
from pyflink.table import DataTypes, TableEnvironment
from pyflink.table.expressions import col, lit
from torch import nn

from flink_torch_ml import PyTorchModel, create_table_environment


class CircleClassifier(nn.Module):
    """forward(x1 [b,1], x2 [b,1]) -> probabilities of (outside, inside) [b,2]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, x1, x2):
        return torch.softmax(self.net(torch.cat([x1, x2], dim=1)), dim=1)


def train_classifier(steps: int = 300) -> CircleClassifier:
    torch.manual_seed(0)
    model = CircleClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        x = torch.rand(512, 2) * 3 - 1.5
        y = (x.pow(2).sum(dim=1) < 1).long()
        loss = nn.functional.nll_loss(torch.log(model(x[:, :1], x[:, 1:]) + 1e-9), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def main(t_env: Optional[TableEnvironment] = None,
         stream_env: Optional[TableEnvironment] = None, rows: int = 2000) -> dict:
    t_env = t_env or create_table_environment("batch", parallelism=2)
    stream_env = stream_env or create_table_environment("streaming", parallelism=2)
    model_dir = os.path.join(tempfile.mkdtemp(prefix="flink-torch-ml-"), "circle")

    PyTorchModel(train_classifier(), ["x1", "x2"], "probabilities").save(model_dir, "onnx")
    print(f"saved ONNX model to {model_dir}: {sorted(os.listdir(model_dir))}")

    # Batch: score a table, take the arg-max in SQL, and measure accuracy there.
    model = PyTorchModel.load(t_env, model_dir)
    points = t_env.from_elements(
        [(i, (i * 37 % 300) / 100 - 1.5, (i * 91 % 300) / 100 - 1.5) for i in range(rows)],
        DataTypes.ROW([DataTypes.FIELD("id", DataTypes.INT()),
                       DataTypes.FIELD("x1", DataTypes.DOUBLE()),
                       DataTypes.FIELD("x2", DataTypes.DOUBLE())]))
    scored = model.transform(points)[0]
    t_env.create_temporary_view("scored", scored)
    accuracy = t_env.sql_query("""
        SELECT AVG(CAST(CASE WHEN (probabilities[2] > 0.5) = (x1 * x1 + x2 * x2 < 1)
                             THEN 1 ELSE 0 END AS DOUBLE)) AS accuracy, COUNT(*) AS n
        FROM scored""").to_pandas()
    print(scored.limit(5).to_pandas())
    batch_accuracy = float(accuracy["accuracy"][0])
    print(f"batch: scored {int(accuracy['n'][0])} rows, accuracy {batch_accuracy:.3f}")

    # Streaming: the same saved model scores a datagen stream (bounded here so it ends).
    stream_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS points")
    stream_env.execute_sql(f"""
        CREATE TEMPORARY TABLE points (x1 DOUBLE, x2 DOUBLE) WITH (
          'connector' = 'datagen', 'number-of-rows' = '{rows}', 'rows-per-second' = '1000000',
          'fields.x1.min' = '-1.5', 'fields.x1.max' = '1.5',
          'fields.x2.min' = '-1.5', 'fields.x2.max' = '1.5')""")
    streamed = PyTorchModel.load(stream_env, model_dir).transform(stream_env.from_path("points"))[0]
    inside = streamed.select(col("x1"), col("x2"),
                             (col("probabilities").at(lit(2)) > 0.5).alias("inside"))
    frame = inside.to_pandas()
    stream_accuracy = float(((frame.x1 ** 2 + frame.x2 ** 2 < 1) == frame.inside).mean())
    print(f"streaming: scored {len(frame)} rows, accuracy {stream_accuracy:.3f}")
    return {"batch_accuracy": batch_accuracy, "stream_accuracy": stream_accuracy,
            "stream_rows": len(frame), "model_dir": model_dir}


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["batch_accuracy"] > 0.9 else 1)
