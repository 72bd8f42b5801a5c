"""Every example under examples/ runs as part of the test suite, on the shared environments."""

import importlib.util
import os

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
    assert sorted(os.listdir(result["model_dir"])) == ["metadata.json", "model.onnx"]


def test_readme_quick_start_runs():
    readme = open(os.path.join(EXAMPLES, "..", "README.md")).read()
    block = readme.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace = {"__name__": "readme_quick_start"}
    exec(compile(block, "README.md quick start", "exec"), namespace)
    assert namespace["loaded"].get_feature_cols() == ("x1", "x2")
