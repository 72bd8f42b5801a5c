"""Every example under examples/ runs as part of the test suite, on the shared environments."""

import importlib.util
import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_table_example(batch_env, stream_env):
    result = load_example("score_table").main(batch_env, stream_env, rows=500)
    assert result["stream_rows"] == 500
    assert result["batch_accuracy"] > 0.9
    assert result["stream_accuracy"] > 0.9
    assert sorted(os.listdir(result["model_dir"])) == ["metadata", "metadata.json", "model.onnx"]


@pytest.mark.compat
def test_readme_quick_start_runs():
    # the docs' quick start, which tests/unit/test_docs.py holds equal to the README's
    page = open(os.path.join(EXAMPLES, "..", "docs", "getting-started.md")).read()
    block = page.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(block, "docs/getting-started.md quick start", "exec"), namespace)
    assert namespace["loaded"].get_feature_cols() == ("x1", "x2")


@pytest.mark.compat
def test_train_and_score_example(stream_env):
    result = load_example("train_and_score").main(stream_env, rows=2000, epochs=10)
    assert result["valid_accuracy"] > 0.85
    assert result["stream_accuracy"] > 0.85
    assert result["stream_rows"] == 2000
    assert len(result["history"]) == 10


@pytest.mark.compat
def test_linear_pytorch_example(stream_env):
    rows = load_example("linear_pytorch").main(stream_env)
    assert [r[0] for r in rows] == [0, 1]
    assert len({(r[1], r[2]) for r in rows}) == 1  # DDP kept the ranks identical
    assert abs(rows[0][1] - 2) < 0.1 and abs(rows[0][2] - 1) < 0.1  # learned y = 2x + 1


@pytest.mark.compat
def test_add_five_streaming_example(stream_env):
    result = load_example("add_five_streaming").main(stream_env, rows=50, sink="collect")
    for frame, column in ((result["transform"], "x_plus_five"), (result["sql"], "y")):
        assert sorted(frame["id"]) == list(range(1, 51))
        assert ((frame[column] - frame["x"] - 5).abs() < 1e-5).all()


def test_add_five_datastream_example():
    from pyflink.datastream import StreamExecutionEnvironment

    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(2)
    values = [float(v) / 4 for v in range(-20, 20)]
    tensors = [[float(i + j) for j in range(i)] for i in range(1, 8)]
    results = load_example("add_five_datastream").main(env, values, tensors)
    assert [v for v, _ in results["rows"]] == sorted(values)
    assert all(abs(p - v - 5) < 1e-5 for v, p in results["rows"])
    assert results["tensors"] == [[v + 5 for v in t] for t in tensors]


def test_model_map_function_scores_rows_numbers_and_rejects_nulls(tmp_path):
    import sys

    import pytest
    import torch
    from pyflink.common import Row, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from flink_torch_ml import ModelMapFunction, PyTorchModel

    class Weighted(torch.nn.Module):
        def forward(self, a, b):
            return 2 * a + b

    path = str(tmp_path / "weighted")
    PyTorchModel(Weighted(), ["a", "b"], "score").save(path, format="torchscript")
    env = StreamExecutionEnvironment.get_execution_environment()
    env.set_parallelism(2)
    env.set_python_executable(sys.executable)
    named = Types.ROW_NAMED(["id", "a", "b"], [Types.INT(), Types.DOUBLE(), Types.DOUBLE()])
    rows = env.from_collection([Row(id=i, a=float(i), b=0.5) for i in range(20)],
                               type_info=named)
    out_type = Types.ROW_NAMED(["id", "a", "b", "score"],
                               [Types.INT(), Types.DOUBLE(), Types.DOUBLE(), Types.DOUBLE()])
    scored = sorted(rows.map(ModelMapFunction(path), output_type=out_type)
                    .execute_and_collect(), key=lambda r: r["id"])
    assert [r["score"] for r in scored] == [2.0 * i + 0.5 for i in range(20)]

    with pytest.raises(TypeError, match="has 2 features"):
        ModelMapFunction(path).map(1.0)
    nulls = env.from_collection([Row(id=1, a=None, b=1.0)], type_info=named)
    with pytest.raises(Exception, match="'a' holds NULL"):
        list(nulls.map(ModelMapFunction(path), output_type=out_type).execute_and_collect())


def test_score_data_stream_rejects_a_non_model(stream_env):
    import pytest
    from pyflink.common import Row, Types
    from pyflink.datastream import StreamExecutionEnvironment

    from flink_torch_ml import score_data_stream

    env = StreamExecutionEnvironment.get_execution_environment()
    stream = env.from_collection([Row(value=1.0)],
                                 type_info=Types.ROW_NAMED(["value"], [Types.FLOAT()]))
    with pytest.raises(TypeError, match="PyTorchModel or the path"):
        score_data_stream(stream, object())
