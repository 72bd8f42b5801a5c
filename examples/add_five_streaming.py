"""The PyTorch-on-Flink ONNX demo ("AddFive"), in Python, on a streaming job.

The original trained a tiny PyTorch network that adds 5 to its input, exported it to ONNX
with a dynamic batch axis, and served it from a Scala RichMapFunction (load in open(), close
in close(), one element at a time) over a static list of numbers, printing the results. Here:
1. the network is built and exported to ONNX by PyTorchModel.save (checked against torch);
2. a streaming job scores an unbounded datagen source (bounded here so the example ends)
   with PyTorchModel.transform: vectorized, the model loaded once per Python worker;
3. the same saved model is registered as a SQL function and used as ``add_five(x)``.
Results go to Flink's print sink.

Run: python examples/add_five_streaming.py
"""

import os
import sys
import tempfile

from pyflink.table import TableDescriptor
from torch import nn

from flink_torch_ml import PyTorchModel, create_table_environment, register_model_function


class AddFive(nn.Module):
    """Adds 5 to every element of its input."""

    def forward(self, x):
        return x + 5.0


def main(t_env=None, rows: int = 20, sink: str = "print") -> dict:
    t_env = t_env or create_table_environment("streaming", parallelism=2)
    path = os.path.join(tempfile.mkdtemp(prefix="flink-torch-ml-"), "add_five")
    PyTorchModel(AddFive(), feature_cols=["x"], prediction_col="x_plus_five").save(
        path, format="onnx")

    t_env.execute_sql("DROP TEMPORARY TABLE IF EXISTS numbers")
    t_env.execute_sql(f"""
        CREATE TEMPORARY TABLE numbers (id BIGINT, x FLOAT) WITH (
          'connector' = 'datagen', 'rows-per-second' = '1000',
          'number-of-rows' = '{rows}',                -- remove for an unbounded stream
          'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{rows}',
          'fields.x.min' = '-10', 'fields.x.max' = '10')""")

    # Table API: transform adds the prediction column
    scored = PyTorchModel.load(t_env, path).transform(t_env.from_path("numbers"))[0]
    # SQL: the same model as a function
    register_model_function(t_env, "add_five", path)
    from_sql = t_env.sql_query("SELECT id, x, add_five(x) AS y FROM numbers")

    if sink == "print":
        statements = t_env.create_statement_set()
        for name, table in (("transform", scored), ("sql", from_sql)):
            statements.add_insert(TableDescriptor.for_connector("print")
                                  .option("print-identifier", name).build(), table)
        statements.execute().wait()
        return {}
    return {"transform": scored.to_pandas(), "sql": from_sql.to_pandas()}


if __name__ == "__main__":
    main()
    sys.exit(0)
