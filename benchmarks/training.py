"""Training cost: PyTorchEstimator.fit against a plain PyTorch loop on the same data.

1,000,000 rows x 16 FLOAT features (datagen) and a label, an MLP 16->64->64->1, 1 epoch,
batch 256, Adam. Prints the wall time of ``fit`` split into start-up (job submission to the
data reaching the worker on a 1,000-row run), data ingestion (the rest of the time until
the shard is in the worker), training (the epoch itself) and the remainder (results back to
the client), beside a plain PyTorch loop over the same rows as in-memory tensors in this
process. Target: fit with worker_num=1 <= 1.3 x plain loop + 10 s start-up. Each figure is
the median of --repeats runs (this 2-core machine varies by +-20% between runs).

Usage: python benchmarks/training.py [--rows 1000000] [--workers 1] [--repeats 3]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from readme import table, write_block  # noqa: E402

import flink_torch_ml  # noqa: F401  (selects PyFlink's process mode first)
from flink_torch_ml import PyTorchEstimator, create_table_environment

FEATURES = [f"x{i}" for i in range(16)]


class MLP(nn.Module):
    """forward(x0..x15, each [b,1]) -> [b,1]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                                 nn.Linear(64, 1))

    def forward(self, *columns):
        return self.net(torch.cat(columns, dim=1))


def adam(model):
    return torch.optim.Adam(model.parameters(), lr=1e-3)


def plain_loop(x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> float:
    """One epoch, same model/optimizer/batch, on in-memory tensors (one tensor per column,
    as the estimator feeds them). Returns seconds."""
    torch.manual_seed(seed)
    model, loss_fn = MLP(), nn.MSELoss()
    optimizer = adam(model)
    columns = [x[:, i:i + 1] for i in range(x.shape[1])]
    start = time.perf_counter()
    order = torch.randperm(len(x))
    for lo in range(0, len(x), batch):
        index = order[lo:lo + batch]
        optimizer.zero_grad()
        loss = loss_fn(model(*[c[index] for c in columns]), y[index])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def fit(t_env, rows: int, workers: int, batch: int):
    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS train_src")
    fields = ", ".join(f"{c} FLOAT" for c in FEATURES)
    bounds = ", ".join(f"'fields.{c}.min' = '-1', 'fields.{c}.max' = '1'"
                       for c in FEATURES + ["y"])
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE train_src ({fields}, y FLOAT) WITH (
        'connector' = 'datagen', 'number-of-rows' = '{rows}',
        'rows-per-second' = '1000000000', {bounds})""")
    estimator = PyTorchEstimator(MLP(), nn.MSELoss(), adam, feature_cols=FEATURES,
                                 label_col="y", max_epochs=1, batch_size=batch,
                                 worker_num=workers, shuffle=True)
    start = time.time()
    model = estimator.fit(t_env.from_path("train_src"))
    end = time.time()
    summaries = model.worker_summaries
    received = max(s["received_at"] for s in summaries) - start
    ready = max(s["started_at"] for s in summaries) - start
    training = sum(h["epoch_seconds"] for h in model.history)
    return {"total": end - start, "received": received, "ready": ready, "training": training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement; the median run is shown")
    parser.add_argument("--write-readme", action="store_true",
                        help="write the figures into README.md's TRAINING block")
    args = parser.parse_args()

    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (args.rows, 16))
                         .astype(np.float32))
    y = x.sum(dim=1, keepdim=True)
    plains = sorted(plain_loop(x, y, args.batch_size) for _ in range(args.repeats))
    plain = plains[len(plains) // 2]

    t_env = create_table_environment("streaming", parallelism=args.workers)
    fit(t_env, 1000, args.workers, args.batch_size)  # warm-up (JIT, worker imports)
    runs = [(fit(t_env, 1000, args.workers, args.batch_size),
             fit(t_env, args.rows, args.workers, args.batch_size)) for _ in range(args.repeats)]
    small, full = sorted(runs, key=lambda r: r[1]["total"])[len(runs) // 2]  # median fit
    totals = ", ".join(f"{r[1]['total']:.1f}" for r in runs)
    startup = small["received"]
    ingestion = full["received"] - startup
    preparation = full["ready"] - full["received"]
    rest = full["total"] - full["ready"] - full["training"]
    print(f"# {args.rows:,} rows x 16 FLOAT, MLP 16-64-64-1, 1 epoch, batch "
          f"{args.batch_size}, worker_num={args.workers}, {os.cpu_count()} cores; median of "
          f"{args.repeats} runs")
    print(f"plain PyTorch loop, in-memory tensors      {plain:8.2f} s   "
          f"(runs: {', '.join(f'{p:.2f}' for p in plains)})")
    print(f"PyTorchEstimator.fit total                 {full['total']:8.2f} s   "
          f"(runs: {totals})")
    print(f"  start-up (1,000-row run to data in worker){startup:8.2f} s")
    print(f"  data ingestion                           {ingestion:8.2f} s "
          f"({(args.rows / ingestion) if ingestion > 0 else float('inf'):,.0f} rows/s)")
    print(f"  shard preparation (convert, balance)     {preparation:8.2f} s")
    print(f"  training (the epoch)                     {full['training']:8.2f} s "
          f"({full['training'] / plain:.2f}x plain loop)")
    print(f"  results back to the client               {rest:8.2f} s")
    bound = 1.3 * plain + 10
    print(f"# target fit <= 1.3 x plain + 10 s = {bound:.1f} s: {full['total']:.1f} s "
          f"{'ok' if full['total'] <= bound else 'MISSED'}; without start-up "
          f"{full['total'] - startup:.1f} s = {(full['total'] - startup) / plain:.2f}x plain")
    if args.write_readme:
        write_block("TRAINING", table(["", "seconds"], [
            ("plain PyTorch loop over the same rows as in-memory tensors", f"{plain:.2f}"),
            (f"`PyTorchEstimator.fit`, total (runs: {totals})", f"{full['total']:.2f}"),
            ("- start-up (job submission to data in the worker, on 1,000 rows)",
             f"{startup:.2f}"),
            (f"- data ingestion ({args.rows / max(ingestion, 1e-9):,.0f} rows/s)",
             f"{ingestion:.2f}"),
            ("- shard preparation (convert, balance)", f"{preparation:.2f}"),
            ("- training, the epoch itself",
             f"{full['training']:.2f} ({full['training'] / plain:.2f}x the plain loop)"),
            ("- results back to the client (job teardown)", f"{rest:.2f}")])
            + f"\n\nWritten by `benchmarks/training.py --write-readme`: {args.rows:,} rows x 16 "
            f"FLOAT, MLP 16-64-64-1, 1 epoch, batch {args.batch_size}, "
            f"worker_num={args.workers}, median of {args.repeats} runs, {os.cpu_count()} cores. "
            f"Target `fit` <= 1.3x plain + 10 s = {bound:.1f} s: "
            f"{'met' if full['total'] <= bound else 'missed'}.")


if __name__ == "__main__":
    sys.exit(main())
