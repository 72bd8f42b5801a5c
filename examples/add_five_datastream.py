"""AddFive for DataStream API users, with a saved ONNX model, two ways:

1. ``score_data_stream``: a stream of Rows scored in Arrow batches through the Table API;
2. ``ModelMapFunction``: the PyTorch-on-Flink demo's RichMapFunction (load in ``open()``,
   release in ``close()``) in ``stream.map(...)``, each element a variable-length tensor of
   numbers scored as one batch.

Run: python examples/add_five_datastream.py
"""

import os
import sys
import tempfile

from pyflink.common import Row, Types
from pyflink.datastream import StreamExecutionEnvironment
from torch import nn

from flink_torch_ml import ModelMapFunction, PyTorchModel, score_data_stream


class AddFive(nn.Module):
    def forward(self, x):
        return x + 5.0


def main(env=None, values=None, tensors=None) -> dict:
    if env is None:
        env = StreamExecutionEnvironment.get_execution_environment()
        env.set_python_executable(sys.executable)  # the workers need torch/onnxruntime too
    path = os.path.join(tempfile.mkdtemp(prefix="flink-torch-ml-"), "add_five")
    PyTorchModel(AddFive(), ["value"], "plus_five").save(path, format="onnx")
    values = values or [1.0, 2.5, -3.0, 10.0, 42.0]
    numbers = env.from_collection([Row(value=v) for v in values],
                                  type_info=Types.ROW_NAMED(["value"], [Types.FLOAT()]))
    scored = score_data_stream(numbers, path)
    results = sorted((row["value"], row["plus_five"]) for row in scored.execute_and_collect())
    for value, plus_five in results:
        print(f"{value} + 5 = {plus_five}")

    tensors = tensors or [[1.0, 2.0, 3.0], [0.5], [-5.0, 5.0]]
    array = Types.PRIMITIVE_ARRAY(Types.FLOAT())
    mapped = env.from_collection(tensors, type_info=array).map(ModelMapFunction(path),
                                                               output_type=array)
    tensor_results = sorted(([v for v in t] for t in mapped.execute_and_collect()), key=len)
    for tensor in tensor_results:
        print(f"AddFive -> {tensor}")
    return {"rows": results, "tensors": tensor_results}


if __name__ == "__main__":
    main()
    sys.exit(0)
