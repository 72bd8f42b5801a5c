"""Streaming latency: per-row latency of PyTorchModel.transform at a fixed input rate.

A datagen source emits --rate rows/s (16 FLOAT features) for --seconds; each row is stamped
with CURRENT_TIMESTAMP right after the source (a Java calc chained to it), scored by a tiny
MLP through transform, and a second Python function that takes the prediction as input
(so it runs after the model) measures the row's age. Prints p50/p95/p99 latency for Python
bundle settings that trade latency for throughput:
  python.fn-execution.bundle.size / bundle.time / arrow.batch.size.

Usage: python benchmarks/streaming.py [--rate 2000] [--seconds 10]
"""

import argparse
import os
import sys
import tempfile

import numpy as np
import pandas as pd
import torch
from pyflink.table import DataTypes
from pyflink.table.expressions import col
from pyflink.table.udf import udf
from torch import nn

import flink_torch_ml  # noqa: F401  (process mode for Python workers)
from flink_torch_ml import PyTorchModel, create_table_environment

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme import table, write_block  # noqa: E402

FEATURES = [f"x{i}" for i in range(16)]
SETTINGS = [  # (label, bundle.size, bundle.time ms, arrow.batch.size)
    ("low latency", 100, 10, 100),
    ("Flink default", 1000, 1000, 1000),
    ("throughput", 10000, 1000, 10000),
]


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, *columns):
        return self.net(torch.cat(columns, dim=1))


@udf(result_type=DataTypes.DOUBLE(), func_type="pandas")
def age_ms(created: pd.Series, prediction: pd.Series) -> pd.Series:
    """Milliseconds since ``created``; ``prediction`` is an input only to run after the model."""
    now = pd.Timestamp.now(tz="UTC")
    created = created.dt.tz_convert("UTC") if created.dt.tz is not None else \
        created.dt.tz_localize("UTC")
    return (now - created).dt.total_seconds() * 1000.0


def run(path: str, rate: int, seconds: int, size: int, time_ms: int, batch: int):
    t_env = create_table_environment("streaming", parallelism=2, config={
        "python.fn-execution.bundle.size": str(size),
        "python.fn-execution.bundle.time": str(time_ms),
        "python.fn-execution.arrow.batch.size": str(batch),
        "table.local-time-zone": "UTC"})
    fields = ", ".join(f"{c} FLOAT" for c in FEATURES)
    bounds = ", ".join(f"'fields.{c}.min' = '-1', 'fields.{c}.max' = '1'" for c in FEATURES)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE src ({fields}) WITH ('connector' = 'datagen',
        'rows-per-second' = '{rate}', 'number-of-rows' = '{rate * seconds}', {bounds})""")
    stamped = t_env.sql_query(f"SELECT {', '.join(FEATURES)}, CURRENT_TIMESTAMP AS created "
                              f"FROM src")
    scored = PyTorchModel.load(t_env, path).transform(stamped)[0]
    frame = scored.select(col("created"), age_ms(col("created"), col("prediction"))
                          .alias("age")).to_pandas()
    created = pd.to_datetime(frame["created"])
    steady = created >= created.min() + pd.Timedelta(seconds=1)  # drop warm-up rows
    return frame["age"][steady].to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=2000, help="input rows per second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into the docs' performance page, STREAMING block")
    args = parser.parse_args()
    path = os.path.join(tempfile.mkdtemp(prefix="ftm-latency-"), "tiny")
    torch.manual_seed(0)
    PyTorchModel(Tiny(), FEATURES).save(path, format="onnx")
    print(f"# {args.rate} rows/s for {args.seconds} s, tiny MLP (ONNX), parallelism 2; "
          f"latency = source stamp -> prediction done, ms (rows created in the first second "
          f"dropped: warm-up)")
    print(f"{'setting':14s} {'bundle.size':>11s} {'bundle.time':>11s} {'arrow.batch':>11s} "
          f"{'p50':>8s} {'p95':>8s} {'p99':>8s}")
    rows = []
    for label, size, time_ms, batch in SETTINGS:
        ages = run(path, args.rate, args.seconds, size, time_ms, batch)
        p50, p95, p99 = np.percentile(ages, [50, 95, 99])
        rows.append((label, f"{size:,}", f"{time_ms:,} ms", f"{batch:,}", f"{p50:,.1f}",
                     f"{p95:,.1f}", f"{p99:,.1f}"))
        print(f"{label:14s} {size:>11d} {time_ms:>9d}ms {batch:>11d} {p50:8.1f} {p95:8.1f} "
              f"{p99:8.1f}")
    if args.write_readme:
        write_block("STREAMING", table(["setting", "`bundle.size`", "`bundle.time`",
                                        "`arrow.batch.size`", "p50 ms", "p95 ms", "p99 ms"],
                                       rows)
                    + f"\n\nWritten by `benchmarks/streaming.py --write-readme`: {args.rate:,} "
                    f"rows/s for {args.seconds} s, {os.cpu_count()} cores.")


if __name__ == "__main__":
    sys.exit(main())
