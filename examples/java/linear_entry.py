"""Node entries of the Java example (LinearExample.java), as in DL-on-Flink's Java guide: the
Flink job is written in Java, the PyTorch code in Python.

``train_entry`` fits y = w x + b with full-batch gradient descent under DDP on every rank's
shard (equal shards, so the averaged gradient is the whole table's and the weights do not
depend on which rows a rank got) and rank 0 writes the weights as JSON to the property
``model_path``; ``inference_entry`` reads them and writes (x, prediction) rows back to Flink.
"""

import json
import os

import torch
import torch.distributed as dist
from pyflink.common import Row
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from flink_torch_ml import PyTorchContext


def _rows(pytorch_context):
    """The shard as two float64 column tensors [n, 1]."""
    xs, ys = [], []
    for x, y in pytorch_context.get_dataset_from_flink():
        xs.append(float(x))
        ys.append(float(y))
    column = lambda values: torch.tensor(values, dtype=torch.float64).reshape(-1, 1)  # noqa: E731
    return column(xs), column(ys)


def train_entry(context):
    pytorch_context = PyTorchContext(context)
    os.environ["MASTER_ADDR"] = pytorch_context.get_master_ip()
    os.environ["MASTER_PORT"] = str(pytorch_context.get_master_port())
    dist.init_process_group(backend="gloo", world_size=pytorch_context.get_world_size(),
                            rank=pytorch_context.get_rank())
    if pytorch_context.get_property("fail_on_rank") == str(pytorch_context.get_rank()):
        raise RuntimeError("this entry was asked to fail (fail_on_rank)")
    x, y = _rows(pytorch_context)
    torch.manual_seed(0)
    model = DDP(nn.Linear(1, 1).double())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    if pytorch_context.get_rank() == 0:
        linear = model.module
        weights = {"w": linear.weight.item(), "b": linear.bias.item(), "loss": loss.item()}
        with open(pytorch_context.get_property("model_path"), "w") as f:
            json.dump(weights, f)
    dist.destroy_process_group()


def inference_entry(context):
    pytorch_context = PyTorchContext(context)
    with open(pytorch_context.get_property("model_path")) as f:
        weights = json.load(f)
    writer = pytorch_context.get_data_writer_to_flink()
    for x, _ in pytorch_context.get_dataset_from_flink():
        writer.write(Row(float(x), weights["w"] * float(x) + weights["b"]))
