"""DL-on-Flink's low-level example, imports aside: a custom DDP training loop on 2 workers
inside Flink learns y = 2x + 1, then writes its parameters back to Flink.

Run: python examples/linear_pytorch.py
"""

import os
import sys

import torch
import torch.distributed as dist
from pyflink.table import DataTypes, Row
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader

from flink_torch_ml import (PyTorchClusterConfig, PyTorchContext, create_table_environment,
                            pytorch_utils)


class LinearModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


def train_entry(context):
    pytorch_context = PyTorchContext(context)
    os.environ['MASTER_ADDR'] = pytorch_context.get_master_ip()
    os.environ['MASTER_PORT'] = str(pytorch_context.get_master_port())
    dist.init_process_group(backend='gloo', world_size=pytorch_context.get_world_size(),
                            rank=pytorch_context.get_rank())
    data_loader = DataLoader(pytorch_context.get_dataset_from_flink(), batch_size=128)
    torch.manual_seed(0)
    model = DDP(LinearModel())
    loss_fn = nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(int(pytorch_context.get_property("epochs", "1"))):
        for batch, (x, y) in enumerate(data_loader):  # the dataset can be read again
            optimizer.zero_grad()
            pred = model(x.unsqueeze(1))
            loss = loss_fn(pred, y.unsqueeze(1))
            loss.backward()
            optimizer.step()
    writer = pytorch_context.get_data_writer_to_flink()
    writer.write(Row(rank=pytorch_context.get_rank(),
                     weight=model.module.linear.weight.item(),
                     bias=model.module.linear.bias.item()))
    dist.destroy_process_group()


def main(t_env=None) -> list:
    t_env = t_env or create_table_environment("streaming", parallelism=2)
    xs = (torch.rand(4000, generator=torch.Generator().manual_seed(0)) * 2 - 1).tolist()
    source_table = t_env.from_elements(
        [(x, 2 * x + 1) for x in xs], DataTypes.ROW([DataTypes.FIELD("x", DataTypes.FLOAT()),
                                                     DataTypes.FIELD("y", DataTypes.FLOAT())]))
    config = (PyTorchClusterConfig.new_builder()
              .set_property('input_types', 'FLOAT_32,FLOAT_32')
              .set_property('output_types', 'INT_32,FLOAT_32,FLOAT_32')
              .set_property('epochs', '8')
              .set_node_entry(train_entry).set_world_size(2).build())
    # train + write back: inference() returns the rows the workers wrote; the entry reads its
    # shard 'epochs' times (pytorch_utils.train(..., epoch=N) repeats the dataset instead)
    result = pytorch_utils.inference(None, source_table, config, ["rank", "weight", "bias"])
    rows = sorted(tuple(r) for r in result.execute().collect())
    for rank, weight, bias in rows:
        print(f"rank {rank}: y = {weight:.3f} x + {bias:.3f}")
    return rows


if __name__ == "__main__":
    learned = main()
    sys.exit(0 if all(abs(w - 2) < 0.2 and abs(b - 1) < 0.2 for _, w, b in learned) else 1)
