"""Jobs that tests/integration/test_cluster.py submits to a standalone Flink cluster with
``scripts/flink-cluster.sh submit``.

  cluster_job.py fit OUT.json       PyTorchEstimator(worker_num=2).fit + transform
  cluster_job.py train-long MARKERS a low-level DDP loop that runs until it is stopped; each
                                    rank writes MARKERS/rank-R (its pid) once running
  cluster_job.py too-many-workers OUT.json  world_size 3 on 2 slots; the error, as JSON
  cluster_job.py fit-resilient OUT.json CKPT  a fit with max_failures and checkpoints in CKPT
"""

import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import (PyTorchClusterConfig, PyTorchContext, PyTorchEstimator,
                            create_table_environment, pytorch_utils)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def line_table(t_env, rows: int):
    """``rows`` points of y = 3x + 1 on [-1, 1], as a table (x, y)."""
    xs = np.linspace(-1, 1, rows)
    return t_env.from_elements(
        [(float(x), float(3 * x + 1)) for x in xs],
        DataTypes.ROW([DataTypes.FIELD("x", DataTypes.DOUBLE()),
                       DataTypes.FIELD("y", DataTypes.DOUBLE())]))


def fit(out_path: str) -> None:
    t_env = create_table_environment("streaming", parallelism=2)
    table = line_table(t_env, 2000)
    estimator = PyTorchEstimator(nn.Linear(1, 1), nn.MSELoss(), sgd, feature_cols="x",
                                 label_col="y", max_epochs=15, batch_size=32, worker_num=2)
    model = estimator.fit(table)
    frame = model.transform(table)[0].to_pandas()
    result = {
        "rows": len(frame),
        "max_error": float(np.abs(frame["prediction"] - frame["y"]).max()),
        "train_rows": [h["train_rows"] for h in model.history],
        "python_executable": t_env.get_config().get("python.executable", None),
    }
    with open(out_path, "w") as f:
        json.dump(result, f)
    print("CLUSTER-FIT-OK", json.dumps(result))


def train_forever(context) -> None:
    """All-reduce in a loop until the job is cancelled or a peer is lost."""
    ctx = PyTorchContext(context)
    os.environ["MASTER_ADDR"] = ctx.get_master_ip()
    os.environ["MASTER_PORT"] = str(ctx.get_master_port())
    dist.init_process_group("gloo", world_size=ctx.get_world_size(), rank=ctx.get_rank())
    value = torch.ones(1000)
    dist.all_reduce(value)
    marker = os.path.join(ctx.get_property("markers"), f"rank-{ctx.get_rank()}")
    with open(marker + ".tmp", "w") as f:
        json.dump({"pid": os.getpid(), "ppid": os.getppid()}, f)
    os.rename(marker + ".tmp", marker)
    deadline = time.time() + float(ctx.get_property("seconds"))
    while time.time() < deadline:
        dist.all_reduce(value)
        time.sleep(0.05)


def train_long(markers: str) -> None:
    t_env = create_table_environment("streaming", parallelism=2)
    table = t_env.from_elements([(float(i),) for i in range(100)], ["x"])
    config = (PyTorchClusterConfig.new_builder()
              .set_property("input_types", "FLOAT_64")
              .set_property("markers", markers)
              .set_property("seconds", "240")
              .set_node_entry(train_forever).set_world_size(2)
              .set_timeout(60).build())
    pytorch_utils.train(None, config, table, epoch=1)
    print("CLUSTER-TRAIN-LONG-FINISHED")


def too_many_workers(out_path: str) -> None:
    """world_size 3 on a cluster with 2 slots: must fail with a clear error, not wait."""
    t_env = create_table_environment("streaming", parallelism=2)
    table = t_env.from_elements([(float(i),) for i in range(10)], ["x"])
    config = (PyTorchClusterConfig.new_builder().set_property("input_types", "FLOAT_64")
              .set_node_entry(train_forever).set_world_size(3).set_timeout(20).build())
    started = time.time()
    try:
        pytorch_utils.train(None, config, table, epoch=1)
        outcome = {"error": None}
    except Exception as error:  # the test checks type and message
        outcome = {"error": type(error).__name__, "message": str(error)[:2000]}
    outcome["seconds"] = time.time() - started
    with open(out_path, "w") as f:
        json.dump(outcome, f)


def fit_resilient(out_path: str, checkpoint_dir: str) -> None:
    """Long enough to lose a TaskManager in the middle; survives it with max_failures."""
    t_env = create_table_environment("streaming", parallelism=2)
    table = line_table(t_env, 20000)
    estimator = PyTorchEstimator(nn.Linear(1, 1), nn.MSELoss(), sgd, feature_cols="x",
                                 label_col="y", max_epochs=8, batch_size=8, worker_num=2,
                                 checkpoint_dir=checkpoint_dir, max_failures=2,
                                 timeout=90.0, verbose=True)
    model = estimator.fit(table)
    frame = model.transform(table)[0].to_pandas()
    result = {"max_error": float(np.abs(frame["prediction"] - frame["y"]).max()),
              "epochs": [h["epoch"] for h in model.history],
              "attempts": [h["attempt"] for h in model.history]}
    with open(out_path, "w") as f:
        json.dump(result, f)
    print("CLUSTER-FIT-RESILIENT-OK", json.dumps(result))


if __name__ == "__main__":
    {"fit": fit, "train-long": train_long, "too-many-workers": too_many_workers,
     "fit-resilient": fit_resilient}[sys.argv[1]](*sys.argv[2:])
