"""Run a PyTorchEstimator inside FlinkML 2.3.0's own Pipeline, save it and reload it with
FlinkML's own loader, then transform. Usage: python flinkml_compat_job.py OVERLAY OUT_DIR,
where OVERLAY holds FlinkML's pyflink/ml package (scripts/fetch-flinkml.sh)."""

import os
import sys

import pyflink

# FlinkML's package lives inside the pyflink namespace: add it before anything imports it
pyflink.__path__.append(os.path.join(sys.argv[1], "pyflink"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyflink.ml.api import Estimator as FlinkMLEstimator  # noqa: E402
from pyflink.ml.api import Model as FlinkMLModel  # noqa: E402
from pyflink.ml.builder import Pipeline as FlinkMLPipeline  # noqa: E402
from pyflink.ml.builder import PipelineModel as FlinkMLPipelineModel  # noqa: E402
from pyflink.table import DataTypes  # noqa: E402
from torch import nn  # noqa: E402

from flink_torch_ml import (PyTorchEstimator, PyTorchModel,  # noqa: E402
                            create_table_environment)


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def main(out_dir: str) -> None:
    assert isinstance(PyTorchEstimator(), FlinkMLEstimator), PyTorchEstimator.__mro__
    assert isinstance(PyTorchModel(), FlinkMLModel), PyTorchModel.__mro__
    t_env = create_table_environment("streaming", parallelism=2)
    xs = np.linspace(-1, 1, 800)
    table = t_env.from_elements([(float(x), float(3 * x + 1)) for x in xs], DataTypes.ROW(
        [DataTypes.FIELD("x", DataTypes.DOUBLE()), DataTypes.FIELD("y", DataTypes.DOUBLE())]))
    estimator = PyTorchEstimator(nn.Linear(1, 1), nn.MSELoss(), sgd, feature_cols="x",
                                 label_col="y", max_epochs=20, batch_size=32, worker_num=2)

    pipeline = FlinkMLPipeline([estimator])
    pipeline.save(os.path.join(out_dir, "pipeline"))
    reloaded_pipeline = FlinkMLPipeline.load(t_env, os.path.join(out_dir, "pipeline"))
    assert isinstance(reloaded_pipeline._stages[0], PyTorchEstimator)

    fitted = reloaded_pipeline.fit(table)
    assert isinstance(fitted, FlinkMLPipelineModel)
    fitted.save(os.path.join(out_dir, "model"))
    loaded = FlinkMLPipelineModel.load(t_env, os.path.join(out_dir, "model"))
    assert isinstance(loaded._stages[0], PyTorchModel)
    frame = loaded.transform(table)[0].to_pandas()
    error = float(np.abs(frame["prediction"] - frame["y"]).max())
    assert len(frame) == 800 and error < 0.1, error
    print(f"FLINKML-COMPAT-OK max_error={error:.4f}")


if __name__ == "__main__":
    main(sys.argv[2])
