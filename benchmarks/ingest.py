"""Ingest throughput: rows/s delivered into W PyTorch workers by pytorch_utils.train.

1,000,000 rows x 8 FLOAT columns from datagen, W = 2, beside two baselines in the same run:
a Java-only pass-through (datagen -> blackhole) and an identity pandas UDF (datagen -> Python
-> blackhole). For the workers, "delivered" means the shard is in the worker's dataset: the
clock stops when the last rank's entry starts. Every path is reported end to end (job
submission included) and with start-up subtracted (the same path on --small rows); the
median of --repeats runs is shown.

Usage: python benchmarks/ingest.py [--rows 1000000] [--workers 2] [--small 10000] [--repeats 3]
                                  [--write-readme]
"""

import argparse
import os
import sys
import time

import flink_torch_ml  # noqa: F401  (selects PyFlink's process mode before any environment)
from flink_torch_ml import PyTorchClusterConfig, PyTorchContext, create_table_environment
from flink_torch_ml import pytorch_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme import rate, table, write_block  # noqa: E402

COLUMNS = [f"f{i}" for i in range(8)]


def ingest_entry(context):
    """Touch the shard (count rows) so the data really is in the worker."""
    dataset = PyTorchContext(context).get_dataset_from_flink()
    sum(len(batch[0]) for batch in dataset.batches(65536))


def source(t_env, rows: int) -> None:
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS src")
    fields = ", ".join(f"{c} FLOAT" for c in COLUMNS)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE src ({fields}) WITH ('connector' = 'datagen',
        'number-of-rows' = '{rows}', 'rows-per-second' = '1000000000')""")


def passthrough(t_env, rows: int) -> float:
    source(t_env, rows)
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS sink")
    t_env.execute_sql(f"CREATE TEMPORARY TABLE sink ({', '.join(c + ' FLOAT' for c in COLUMNS)})"
                      f" WITH ('connector' = 'blackhole')")
    start = time.perf_counter()
    t_env.execute_sql("INSERT INTO sink SELECT * FROM src").wait()
    return time.perf_counter() - start


def identity_udf(t_env, rows: int) -> float:
    import pandas as pd
    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    @udf(result_type=DataTypes.FLOAT(), func_type="pandas")
    def identity(*columns: pd.Series) -> pd.Series:
        return columns[0]

    source(t_env, rows)
    t_env.drop_temporary_function("identity_fn")
    t_env.create_temporary_function("identity_fn", identity)
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS sink1")
    t_env.execute_sql("CREATE TEMPORARY TABLE sink1 (y FLOAT) WITH ('connector' = 'blackhole')")
    start = time.perf_counter()
    t_env.execute_sql(f"INSERT INTO sink1 SELECT identity_fn({', '.join(COLUMNS)}) FROM src") \
        .wait()
    return time.perf_counter() - start


def workers(t_env, rows: int, world_size: int) -> float:
    source(t_env, rows)
    config = (PyTorchClusterConfig.new_builder()
              .set_property("input_types", ",".join(["FLOAT_32"] * len(COLUMNS)))
              .set_node_entry(ingest_entry).set_world_size(world_size).build())
    start = time.time()
    results = pytorch_utils.train(None, config, t_env.from_path("src"))
    assert sum(r["rows"] for r in results) == rows, results
    return max(r["started_at"] for r in results) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="python.fn-execution.arrow.batch.size/bundle.size for the UDF")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into the docs' performance page, INGEST block")
    args = parser.parse_args()
    t_env = create_table_environment("streaming", parallelism=args.workers, config={
        "python.fn-execution.arrow.batch.size": str(args.batch_size),
        "python.fn-execution.bundle.size": str(args.batch_size)})
    print(f"# {args.rows:,} rows x {len(COLUMNS)} FLOAT, datagen, parallelism {args.workers}, "
          f"{os.cpu_count()} cores; rows/s (end to end | start-up on {args.small:,} rows "
          f"subtracted)")
    figures, rows = {}, []
    for name, run in [("Java-only pass-through", passthrough),
                      ("identity pandas UDF", identity_udf),
                      (f"into {args.workers} PyTorch workers (train)",
                       lambda env, n: workers(env, n, args.workers))]:
        run(t_env, args.small)  # warm-up: JIT, Python worker imports
        runs = []
        for _ in range(args.repeats):
            small, full = run(t_env, args.small), run(t_env, args.rows)
            runs.append((full, small, (args.rows - args.small) / max(full - small, 1e-9)))
        full, small, net = sorted(runs, key=lambda r: r[2])[len(runs) // 2]  # median run
        figures[name] = net
        rows.append((name, args.rows / full, net))
        print(f"{name:42s} {args.rows / full:>12,.0f} | {net:>12,.0f}   "
              f"({full:.2f} s, start-up {small:.2f} s; median of {args.repeats})")
    into = figures[f"into {args.workers} PyTorch workers (train)"]
    floor = figures["identity pandas UDF"]
    print(f"# into the workers / identity pandas UDF (same run): {into / floor:.2f}x")
    print(f"# target >= 300,000 rows/s into the workers: {into:,.0f} "
          f"{'ok' if into >= 300_000 else 'MISSED'}")
    if args.write_readme:
        write_block("INGEST", table(
            ["path", "end to end", "start-up subtracted", "/ identity UDF"],
            [(name, rate(end), rate(net), f"{net / floor:.2f}x") for name, end, net in rows])
            + f"\n\nWritten by `benchmarks/ingest.py --write-readme`: {args.rows:,} rows x "
            f"{len(COLUMNS)} FLOAT, W = {args.workers}, median of {args.repeats} runs, "
            f"{os.cpu_count()} cores; start-up measured on {args.small:,} rows.")


if __name__ == "__main__":
    sys.exit(main())
