"""AddFive for DataStream API users: a stream of numbers scored in batches by a saved ONNX
model (the PyTorch-on-Flink demo's RichMapFunction, made vectorized).

Run: python examples/add_five_datastream.py
"""

import os
import sys
import tempfile

from pyflink.common import Row, Types
from pyflink.datastream import StreamExecutionEnvironment
from torch import nn

from flink_torch_ml import PyTorchModel, score_data_stream


class AddFive(nn.Module):
    def forward(self, x):
        return x + 5.0


def main(env=None, values=None) -> list:
    env = env or StreamExecutionEnvironment.get_execution_environment()
    path = os.path.join(tempfile.mkdtemp(prefix="flink-torch-ml-"), "add_five")
    PyTorchModel(AddFive(), ["value"], "plus_five").save(path, format="onnx")
    values = values or [1.0, 2.5, -3.0, 10.0, 42.0]
    numbers = env.from_collection([Row(value=v) for v in values],
                                  type_info=Types.ROW_NAMED(["value"], [Types.FLOAT()]))
    scored = score_data_stream(numbers, path)
    results = sorted((row["value"], row["plus_five"]) for row in scored.execute_and_collect())
    for value, plus_five in results:
        print(f"{value} + 5 = {plus_five}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
