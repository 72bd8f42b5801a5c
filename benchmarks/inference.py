"""Inference throughput: PyTorchModel.transform against the limits that bound it.

For a tiny MLP (16->32->1) and a compute-heavy MLP (16->1024->1024->1), in both formats, prints
rows/s of ``PyTorchModel.transform`` over a datagen table of 16 FLOAT columns into a blackhole
sink, beside:
  - the raw limit: the same model run by onnxruntime / TorchScript on the same numpy data with
    the same batch size, the best of one process with all cores and P processes (P = the
    job's parallelism) with cores/P threads each, running at once;
  - Flink's floor for Python UDFs: an identity pandas UDF taking the same 16 columns;
  - a row-at-a-time Python UDF calling the model (the DL-on-Flink docs' approach).
Rates exclude JVM, job and worker start-up: every UDF records when its first batch starts and
its last batch ends; rate = all rows / (last end - first start) over all parallel workers.

Usage: python benchmarks/inference.py [--rows 1000000] [--batch-size 10000] [--mode process]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme import table, write_block  # noqa: E402


FEATURES = [f"x{i}" for i in range(16)]


def build_models():
    import torch
    from torch import nn

    class Columns(nn.Module):
        """forward(x0..x15, each [b,1]) -> mlp(cat) : the library's one-tensor-per-column API."""

        def __init__(self, mlp):
            super().__init__()
            self.mlp = mlp

        def forward(self, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15):
            return self.mlp(torch.cat([x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12,
                                       x13, x14, x15], dim=1))

    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
    heavy = nn.Sequential(nn.Linear(16, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 1))
    return {"tiny": (Columns(tiny).eval(), tiny.eval()), "heavy": (Columns(heavy).eval(),
                                                                   heavy.eval())}


def _time_model(model_dir: str, fmt: str, data: np.ndarray, batch: int, threads: int,
                ready=None):
    """Load the saved model with ``threads`` threads, warm it up, wait on ``ready`` (a
    barrier, if given), then run ``data`` through it in batches: (start, end, rows)."""
    from flink_torch_ml.core.runner import ModelRunner
    from flink_torch_ml.core.serialization import read_model_dir

    saved = read_model_dir(model_dir)
    runner = ModelRunner(fmt, saved.model_bytes, saved.spec.feature_cols, num_threads=threads)
    runner.open()
    columns = [np.ascontiguousarray(data[:, i:i + 1]) for i in range(data.shape[1])]
    runner.predict([c[:batch] for c in columns])  # warm up
    if ready is not None:
        ready.wait()
    start = time.time()
    for lo in range(0, len(data), batch):
        runner.predict([c[lo:lo + batch] for c in columns])
    return start, time.time(), len(data)


def raw_limit(model_dir: str, fmt: str, data: np.ndarray, batch: int) -> float:
    """Rows/s of the saved model run directly on numpy batches in this process (all cores)."""
    start, end, rows = _time_model(model_dir, fmt, data, batch, os.cpu_count() or 1)
    return rows / (end - start)


def _limit_worker(model_dir, fmt, data, batch, threads, barrier, results):
    results.put(_time_model(model_dir, fmt, data, batch, threads, barrier))


def raw_limit_processes(model_dir: str, fmt: str, data: np.ndarray, batch: int,
                        processes: int) -> float:
    """Rows/s of ``processes`` processes, each running the model with cores/processes threads
    on its share of the rows at the same time (what P Flink subtasks can reach at best)."""
    import multiprocessing

    cores = os.cpu_count() or 1
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    shares = np.array_split(data, processes)
    workers = [context.Process(target=_limit_worker, args=(
        model_dir, fmt, share, batch, max(1, cores // processes), barrier, results))
        for share in shares]
    for w in workers:
        w.start()
    parts = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join(60)
    return sum(p[2] for p in parts) / (max(p[1] for p in parts) - min(p[0] for p in parts))


def make_env(args):
    from flink_torch_ml import create_table_environment

    return create_table_environment("batch", parallelism=args.parallelism, config={
        "python.fn-execution.arrow.batch.size": str(args.batch_size),
        # several batches per bundle (Flink's default bundle is 1,000 rows): the end of a
        # bundle is a round trip in which the Python worker idles
        "python.fn-execution.bundle.size": str(args.bundle_size),
    })


class Timed:
    """Mixin for a ScalarFunction: record first-call start, last-call end and rows, and write
    them to ``timing_dir`` on close (one file per worker process/function instance)."""

    def _timed_init(self, timing_dir: str):
        self.timing_dir = timing_dir
        self.first = self.last = None
        self.rows = 0

    def _timed(self, rows: int, call):
        begin = time.time()
        result = call()
        self.first = begin if self.first is None else self.first
        self.last = time.time()
        self.rows += rows
        return result

    def close(self):
        if self.first is not None:
            import json
            import uuid
            with open(os.path.join(self.timing_dir, uuid.uuid4().hex), "w") as f:
                json.dump({"first": self.first, "last": self.last, "rows": self.rows}, f)
        super().close()


def jvm_cpu_seconds() -> float:
    """CPU seconds used so far by the JVMs this process started (Flink's mini-cluster)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name == "java" and int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


#: cores the JVM used during the last run_job (source, Arrow serialization, sink, Flink)
LAST_JVM_CORES = [0.0]


def run_job(t_env, rows: int, build) -> float:
    """Rows/s of the timed UDF in ``build(source_table, timing_dir)`` over ``rows`` datagen rows
    into a blackhole sink, from the first batch's start to the last batch's end."""
    import json

    timing_dir = tempfile.mkdtemp(prefix="ftm-timing-")
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS src")
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS sink")
    fields = ", ".join(f"{c} FLOAT" for c in FEATURES)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE src ({fields}) WITH ('connector' = 'datagen',
        'number-of-rows' = '{rows}', 'rows-per-second' = '1000000000')""")
    t_env.execute_sql("CREATE TEMPORARY TABLE sink (y FLOAT) WITH ('connector' = 'blackhole')")
    jvm_before, started = jvm_cpu_seconds(), time.time()
    build(t_env.from_path("src"), timing_dir).execute_insert("sink").wait()
    LAST_JVM_CORES[0] = (jvm_cpu_seconds() - jvm_before) / (time.time() - started)
    parts = [json.load(open(os.path.join(timing_dir, f))) for f in os.listdir(timing_dir)]
    seen = sum(p["rows"] for p in parts)
    if seen != rows:
        raise RuntimeError(f"timed UDFs saw {seen} rows, expected {rows}")
    return seen / (max(p["last"] for p in parts) - min(p["first"] for p in parts))


def identity_udf(timing_dir: str):
    import pandas as pd
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class Identity(Timed, ScalarFunction):
        def __init__(self):
            self._timed_init(timing_dir)

        def eval(self, *columns: pd.Series) -> pd.Series:
            return self._timed(len(columns[0]), lambda: columns[0])

    return udf(Identity(), result_type=DataTypes.FLOAT(), func_type="pandas")


def transform_udf(model, table, timing_dir: str):
    """PyTorchModel.transform's own UDF (PredictFunction), with timing added around eval."""
    from flink_torch_ml.worker.predict import PredictFunction
    from pyflink.table.udf import udf

    class TimedPredict(Timed, PredictFunction):
        def __init__(self, *args):
            PredictFunction.__init__(self, *args)
            self._timed_init(timing_dir)

        def eval(self, *columns):
            return self._timed(len(columns[0]), lambda: PredictFunction.eval(self, *columns))

    spec = model._resolve_spec(table)
    function = TimedPredict(model._runner(spec), spec, True, 2)
    return udf(function, result_type=spec.prediction_type.to_flink(), func_type="pandas")


def row_udf(model_bytes: bytes, timing_dir: str):
    """The DL-on-Flink docs' approach: a general UDF that runs the model once per row."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import ScalarFunction, udf

    class RowPredict(Timed, ScalarFunction):
        def __init__(self, payload):
            self.payload = payload
            self.model = None
            self._timed_init(timing_dir)

        def open(self, context):
            import io

            import torch
            torch.set_num_threads(1)
            self.model = torch.jit.load(io.BytesIO(self.payload))

        def eval(self, *values):
            import torch

            def predict():
                with torch.no_grad():
                    x = torch.tensor([values], dtype=torch.float32)
                    return self.model(*x.split(1, dim=1)).item()
            return self._timed(1, predict)

    return udf(RowPredict(model_bytes), result_type=DataTypes.FLOAT())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--row-udf-rows", type=int, default=100_000,
                        help="rows for the slow row-at-a-time UDF")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="python.fn-execution.arrow.batch.size")
    parser.add_argument("--bundle-size", type=int, default=100_000,
                        help="python.fn-execution.bundle.size (Flink's default: 1,000)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--mode", choices=["process", "loopback"], default="process",
                        help="Python worker mode (process: one Python process per subtask)")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into the docs' performance page, INFERENCE block")
    args = parser.parse_args()
    os.environ["_python_worker_execution_mode"] = args.mode

    from pyflink.table.expressions import col

    from flink_torch_ml import PyTorchModel
    from flink_torch_ml.core.serialization import read_model_dir

    t_env = make_env(args)
    models = build_models()
    work = tempfile.mkdtemp(prefix="ftm-bench-")
    data = np.random.default_rng(0).uniform(-1, 1, size=(args.rows, 16)).astype(np.float32)
    cols = [col(c) for c in FEATURES]
    print(f"# {args.rows:,} rows x 16 FLOAT, parallelism {args.parallelism}, {args.mode} mode, "
          f"arrow batch {args.batch_size}, bundle {args.bundle_size}, {os.cpu_count()} cores; "
          f"rows/s, start-up excluded")

    run_job(t_env, min(args.rows, 200_000),  # warm-up: JVM JIT, Python worker imports
            lambda t, d: t.select(identity_udf(d)(*cols).alias("y")))
    floor = run_job(t_env, args.rows,
                    lambda t, d: t.select(identity_udf(d)(*cols).alias("y")))
    print(f"{'identity pandas UDF (Flink floor)':46s} {floor:>12,.0f}")

    results, limits, jvm_cores = {}, {}, {}
    for name, (columns_module, _) in models.items():
        for fmt in ("torchscript", "onnx"):
            path = os.path.join(work, f"{name}-{fmt}")
            PyTorchModel(columns_module, FEATURES, "y").save(path, format=fmt)
            one = raw_limit(path, fmt, data, args.batch_size)
            many = raw_limit_processes(path, fmt, data, args.batch_size, args.parallelism)
            limit = max(one, many)
            model = PyTorchModel.load(t_env, path)
            flink = run_job(t_env, args.rows, lambda t, d: t.select(
                transform_udf(model, t, d)(*cols).alias("y")))
            results[(name, fmt)] = (flink, limit)
            print(f"{name + ' ' + fmt + ' raw limit, 1 process':46s} {one:>12,.0f}")
            print(f"{name + ' ' + fmt + f' raw limit, {args.parallelism} processes':46s} "
                  f"{many:>12,.0f}")
            limits[(name, fmt)] = (one, many)
            print(f"{name + ' ' + fmt + ' PyTorchModel.transform':46s} {flink:>12,.0f}"
                  f"   {flink / limit:5.2f}x limit  {flink / floor:5.2f}x identity  "
                  f"(the JVM used {LAST_JVM_CORES[0]:.2f} of {os.cpu_count()} cores)")
            jvm_cores[(name, fmt)] = LAST_JVM_CORES[0]
        saved = read_model_dir(os.path.join(work, f"{name}-torchscript"))
        slow = run_job(t_env, args.row_udf_rows, lambda t, d: t.select(
            row_udf(saved.model_bytes, d)(*cols).alias("y")))
        best = max(results[(name, "torchscript")][0], results[(name, "onnx")][0])
        print(f"{name + ' row-at-a-time UDF (DL-on-Flink docs)':46s} {slow:>12,.0f}"
              f"   transform is {best / slow:5.1f}x faster")
        results[(name, "row")] = (slow, None)

    tiny_best = max(results[("tiny", f)][0] for f in ("torchscript", "onnx"))
    heavy_ratio = min(results[("heavy", f)][0] / results[("heavy", f)][1]
                      for f in ("torchscript", "onnx"))
    print("# targets: heavy >= 0.95x best raw limit (both formats): %.2fx %s | tiny >= 0.7x "
          "identity: %.2fx %s | >= 10x row-at-a-time: %.1fx %s" % (
              heavy_ratio, "ok" if heavy_ratio >= 0.95 else "MISSED",
              tiny_best / floor, "ok" if tiny_best >= 0.7 * floor else "MISSED",
              tiny_best / results[("tiny", "row")][0],
              "ok" if tiny_best >= 10 * results[("tiny", "row")][0] else "MISSED"))
    if args.write_readme:
        def rate(v):
            return f"{v:,.0f}"

        write_block("INFERENCE", table(
            [f"rows/s, {args.rows // 1000}k rows x 16 FLOAT", "TorchScript", "ONNX"], [
                ("tiny MLP 16->32->1: `PyTorchModel.transform`",
                 rate(results[("tiny", "torchscript")][0]), rate(results[("tiny", "onnx")][0])),
                ("tiny MLP: identity pandas UDF on the same 16 columns (Flink's floor)",
                 rate(floor), rate(floor)),
                (f"tiny MLP: row-at-a-time UDF calling the model (DL-on-Flink docs, "
                 f"{args.row_udf_rows // 1000}k rows)", rate(results[("tiny", "row")][0]), "-"),
                (f"tiny MLP: raw limit, model alone on numpy, 1 process, {os.cpu_count()} "
                 f"threads", rate(limits[("tiny", "torchscript")][0]),
                 rate(limits[("tiny", "onnx")][0])),
                ("heavy MLP 16->1024->1024->1: `PyTorchModel.transform`",
                 rate(results[("heavy", "torchscript")][0]),
                 rate(results[("heavy", "onnx")][0])),
                (f"heavy MLP: raw limit, 1 process x {os.cpu_count()} threads",
                 rate(limits[("heavy", "torchscript")][0]), rate(limits[("heavy", "onnx")][0])),
                (f"heavy MLP: raw limit, {args.parallelism} processes x "
                 f"{max(1, (os.cpu_count() or 1) // args.parallelism)} threads",
                 rate(limits[("heavy", "torchscript")][1]), rate(limits[("heavy", "onnx")][1])),
                ("heavy MLP: row-at-a-time UDF", rate(results[("heavy", "row")][0]), "-")])
            + f"\n\nWritten by `benchmarks/inference.py --write-readme`: parallelism "
            f"{args.parallelism}, {args.mode} mode, Arrow batch {args.batch_size:,}, bundle "
            f"{args.bundle_size:,}, "
            f"{os.cpu_count()} cores. Heavy model at "
            + " and ".join(f"{results[('heavy', f)][0] / results[('heavy', f)][1]:.2f}x ({f})"
                           for f in ("torchscript", "onnx"))
            + " of the best raw limit; Flink's JVM (job start, source, Arrow, sink) used "
            f"{jvm_cores[('heavy', 'torchscript')]:.2f} and "
            f"{jvm_cores[('heavy', 'onnx')]:.2f} of the {os.cpu_count()} cores; tiny model at "
            f"{tiny_best / floor:.2f}x the identity UDF "
            f"and {tiny_best / results[('tiny', 'row')][0]:.1f}x the row-at-a-time UDF.")


if __name__ == "__main__":
    sys.exit(main())
