"""Online training: how many rows per second ``OnlinePyTorchEstimator`` trains on at W=2, next
to the raw PyTorch limit (the same updates in one process, no Flink), and the model-version
lag at a fixed input rate: from the end of an update to the first row scored with the
version it produced, in the same job.

    python benchmarks/online.py [--rows 300000] [--batch 1000] [--rate 2000]
                                [--write-readme]

Throughput: a bounded datagen table, unthrottled; the rate is the rows of versions 2..n
divided by the time between version 1 and version n (each version row records when rank 0
finished the update), so job start-up is not counted. Lag: a throttled unbounded stream is
trained on and scored in one job; a Python UDF after the scoring stamps each row with the
wall clock (same machine), and each version's lag is the stamp of the first row scored with
it minus the version's time.
"""

import argparse
import sys
import time

import numpy as np
import torch
from pyflink.table import DataTypes
from pyflink.table.udf import udf
from torch import nn

from flink_torch_ml import OnlinePyTorchEstimator, create_table_environment

sys.path.insert(0, __import__("os").path.dirname(__file__))
import readme  # noqa: E402


class Net(nn.Module):
    """Four scalar features -> a logit, through a 64-unit MLP."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 1))

    def forward(self, a, b, c, d):
        return self.net(torch.cat([a, b, c, d], dim=1))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


LABEL = "CAST(CASE WHEN a + b - c * d > 0 THEN 1 ELSE 0 END AS FLOAT) AS y"


def source(t_env, name: str, options: str) -> None:
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE {name} (a FLOAT, b FLOAT, c FLOAT, d FLOAT) WITH (
          'connector' = 'datagen', {options}
          'fields.a.min' = '-1', 'fields.a.max' = '1', 'fields.b.min' = '-1',
          'fields.b.max' = '1', 'fields.c.min' = '-1', 'fields.c.max' = '1',
          'fields.d.min' = '-1', 'fields.d.max' = '1')""")


def estimator(batch: int):
    torch.manual_seed(0)
    return OnlinePyTorchEstimator(Net(), nn.BCEWithLogitsLoss(), sgd,
                                  feature_cols=["a", "b", "c", "d"], label_col="y",
                                  global_batch_size=batch, worker_num=2)


def flink_throughput(rows: int, batch: int) -> float:
    t_env = create_table_environment("streaming", parallelism=2)
    source(t_env, "bench_rows", f"'number-of-rows' = '{rows}',")
    table = t_env.sql_query(f"SELECT a, b, c, d, {LABEL} FROM bench_rows")
    data = estimator(batch).fit(table).get_model_data()[0]
    with data.select(data.modelVersion, data.versionTime, data.rowsTrained) \
            .execute().collect() as result:
        versions = sorted(tuple(r) for r in result)
    first, last = versions[0], versions[-1]
    trained = sum(v[2] for v in versions[1:])
    return trained / ((last[1] - first[1]) / 1000.0)


class _CountRows:
    """The floor: the online job's shape (round-robin keys, a keyed Python process function
    per rank) doing nothing but count; emits one row per ``every`` rows with the time."""

    def __init__(self, every: int):
        self.every = every

    def function(self):
        from pyflink.common import Row
        from pyflink.datastream import KeyedProcessFunction

        every = self.every

        class Count(KeyedProcessFunction):
            def open(self, runtime_context):
                self.n = 0

            def process_element(self, value, ctx):
                self.n += 1
                if self.n % every == 0:
                    yield Row(self.n, int(time.time() * 1000))

        return Count()


def flink_floor(rows: int, batch: int) -> float:
    """Rows/s of the online job's shape with a process function that only counts."""
    from pyflink.common import Types

    from flink_torch_ml.client.job import stream_shard_keys
    from flink_torch_ml.client.online_job import ShardSelector

    t_env = create_table_environment("streaming", parallelism=2)
    source(t_env, "floor_rows", f"'number-of-rows' = '{rows}',")
    table = t_env.sql_query(f"SELECT -1 AS r, a, b, c, d, {LABEL} FROM floor_rows")
    stream = t_env.to_data_stream(table)
    counted = stream.key_by(ShardSelector(stream_shard_keys(2)), key_type=Types.INT()) \
        .process(_CountRows(batch // 2).function(),
                 output_type=Types.ROW([Types.LONG(), Types.LONG()])).set_parallelism(2)
    with counted.execute_and_collect() as result:
        stamps = sorted(r[1] for r in result)
    return (len(stamps) - 2) * batch / 2 / ((stamps[-1] - stamps[0]) / 1000.0)


def raw_limit(batch: int, updates: int = 200) -> float:
    """The same updates (forward, backward, SGD step) in this process with all cores."""
    torch.manual_seed(0)
    model, loss = Net(), nn.BCEWithLogitsLoss()
    optimizer = sgd(model)
    x = torch.rand(batch, 4) * 2 - 1
    y = ((x[:, 0] + x[:, 1] - x[:, 2] * x[:, 3]) > 0).float().unsqueeze(1)
    features = [x[:, i:i + 1] for i in range(4)]
    for _ in range(10):
        optimizer.zero_grad()
        loss(model(*features), y).backward()
        optimizer.step()
    started = time.perf_counter()
    for _ in range(updates):
        optimizer.zero_grad()
        loss(model(*features), y).backward()
        optimizer.step()
    return updates * batch / (time.perf_counter() - started)


@udf(result_type=DataTypes.BIGINT())
def wall_clock_ms(_version):
    return int(time.time() * 1000)


def version_lag(batch: int, rate: int, seconds: float = 40.0) -> np.ndarray:
    """Per version, ms from its time to the first row scored with it. One job trains,
    scores and, in Flink SQL, keeps the first stamp per version joined with the version's
    time (collecting every scored row would throttle the job to the collect's pace)."""
    from pyflink.table.expressions import col

    t_env = create_table_environment("streaming", parallelism=2)
    source(t_env, "bench_stream", f"'rows-per-second' = '{rate}',")
    table = t_env.sql_query(f"SELECT a, b, c, d, {LABEL} FROM bench_stream")
    model = estimator(batch).fit(table)
    data = model.get_model_data()[0]
    scored = model.transform(table)[0]
    t_env.create_temporary_view("lag_versions", data)
    t_env.create_temporary_view("lag_scored", scored.select(
        col("modelVersion"), wall_clock_ms(col("modelVersion")).alias("stamp")))
    lag = t_env.sql_query(
        "SELECT s.v, s.first_stamp - d.versionTime FROM (SELECT modelVersion AS v, "
        "MIN(stamp) AS first_stamp FROM lag_scored GROUP BY modelVersion) s "
        "JOIN lag_versions d ON s.v = d.modelVersion")
    lags, deadline = {}, None
    with lag.execute().collect() as result:
        for row in result:
            now = time.monotonic()
            deadline = deadline or now + seconds
            lags[row[0]] = row[1]  # an update of a version's row replaces it
            if now > deadline:
                break
    ordered = [lags[v] for v in sorted(lags)]
    return np.array(ordered[2:], dtype=float)  # the first versions meet a start-up backlog


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=2000)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    limit = raw_limit(args.batch)
    floor = flink_floor(args.rows, args.batch)
    rate = flink_throughput(args.rows, args.batch)
    lags = version_lag(args.batch, args.rate)
    rows = [["online training, W=2, global batch " + str(args.batch), readme.rate(rate),
             f"{rate / floor:.2f}x of {readme.rate(floor)} (the same job counting rows: "
             f"Flink's per-row Python floor); {rate / limit:.3f}x of {readme.rate(limit)} "
             f"(raw PyTorch, the same updates in 1 process)"],
            [f"version lag at {args.rate} rows/s (p50 / p95, {len(lags)} versions)",
             f"{np.percentile(lags, 50):.0f} / {np.percentile(lags, 95):.0f} ms", ""]]
    markdown = readme.table(["measure", "value", "compared with"], rows)
    print(markdown)
    if args.write_readme:
        readme.write_block("ONLINE", markdown)


if __name__ == "__main__":
    main()
