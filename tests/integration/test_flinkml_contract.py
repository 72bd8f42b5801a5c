"""The FlinkML contract: our Pipeline, model data as a table, and compatibility with FlinkML
2.3.0's own Pipeline/PipelineModel code (fetched as a source distribution)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes
from torch import nn

from flink_torch_ml import (Pipeline, PipelineModel, PyTorchEstimator, PyTorchModel,
                            UntrustedArtifactError)
from flink_torch_ml._compat import table_columns

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def line_table(env, n=600):
    xs = np.linspace(-1, 1, n)
    return env.from_elements([(float(x), float(3 * x + 1)) for x in xs], DataTypes.ROW(
        [DataTypes.FIELD("x", DataTypes.DOUBLE()), DataTypes.FIELD("y", DataTypes.DOUBLE())]))


def test_no_argument_constructors():
    for cls in (PyTorchEstimator, PyTorchModel, Pipeline, PipelineModel):
        stage = cls()
        assert isinstance(stage.get_param_map(), dict)


def test_our_pipeline_fits_saves_loads_and_transforms(stream_env, tmp_path):
    table = line_table(stream_env)
    estimator = PyTorchEstimator(nn.Linear(1, 1), nn.MSELoss(), sgd, feature_cols="x",
                                 label_col="y", max_epochs=15, batch_size=32, worker_num=2)
    pipeline = Pipeline([estimator])
    pipeline.save(str(tmp_path / "pipeline"))
    with pytest.raises(UntrustedArtifactError, match="estimator"):  # cloudpickled: code
        Pipeline.load(stream_env, str(tmp_path / "pipeline"))
    fitted = Pipeline.load(stream_env, str(tmp_path / "pipeline"), trusted=True).fit(table)
    assert isinstance(fitted.get_stages()[0], PyTorchModel)
    fitted.save(str(tmp_path / "model"))
    loaded = PipelineModel.load(stream_env, str(tmp_path / "model"))
    frame = loaded.transform(table)[0].to_pandas()
    np.testing.assert_allclose(frame["prediction"], frame["y"], atol=0.1)


def test_model_data_round_trips_through_a_table(stream_env, tmp_path):
    module = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))
    model = PyTorchModel(module, ["x"])
    model._t_env = stream_env
    data = model.get_model_data()
    assert len(data) == 1
    assert table_columns(data[0])[0] == ["format", "model", "spec"]
    copy = PyTorchModel().set_model_data(*data)
    table = line_table(stream_env, 50)
    got = copy.transform(table)[0].to_pandas().sort_values("x")
    with torch.no_grad():
        want = module(torch.tensor(got["x"].to_numpy(), dtype=torch.float32)[:, None])
    np.testing.assert_allclose(got["prediction"], want.numpy()[:, 0], atol=1e-5)
    loaded = PyTorchModel.load(stream_env, _saved(model, tmp_path))
    assert loaded.get_model_data()[0].to_pandas()["format"][0] == "torchscript"


def _saved(model, tmp_path):
    path = str(tmp_path / "m")
    model.save(path)
    assert "metadata" in os.listdir(path)  # FlinkML's loader reads this file
    return path


@pytest.fixture(scope="module")
def flinkml_overlay():
    """FlinkML 2.3.0's pyflink/ml package, downloaded once into .cache/ (its installer
    refuses Python > 3.8, so only the source distribution is fetched)."""
    dest = os.path.join(ROOT, ".cache", "flinkml-2.3.0")
    done = subprocess.run([os.path.join(ROOT, "scripts", "fetch-flinkml.sh"), dest],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"could not fetch apache-flink-ml 2.3.0: {done.stderr.strip()[-300:]}")
    return dest


def test_estimator_inside_flinkml_pipeline_saved_and_loaded_by_flinkml(flinkml_overlay,
                                                                       tmp_path):
    job = os.path.join(os.path.dirname(__file__), "flinkml_compat_job.py")
    done = subprocess.run([sys.executable, job, flinkml_overlay, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FLINKML-COMPAT-OK" in done.stdout
