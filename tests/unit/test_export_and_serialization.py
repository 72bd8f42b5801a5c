import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from flink_torch_ml import ChecksumMismatchError, DataType, ModelExportError, ModelFormatError
from flink_torch_ml.core.export import check_onnx, to_onnx, to_torchscript
from flink_torch_ml.core.runner import ModelRunner
from flink_torch_ml.core.serialization import read_model_dir, write_model_dir
from flink_torch_ml.core.spec import FeatureSpec, ModelSpec
from tests.models import MixedClassifier

SPEC = ModelSpec((FeatureSpec("x", DataType.FLOAT_64, 1, "float32"),
                  FeatureSpec("v", DataType.FLOAT_32_ARRAY, 4, "float32")),
                 "p", DataType.FLOAT_32_ARRAY, 3)


class DataDependent(nn.Module):
    """Python control flow on values: tracing freezes one branch, so ONNX export disagrees."""

    def forward(self, x):
        if float(x.sum()) > 0:
            return x * 2
        return x * -1


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_runner_on_exported_bytes_matches_module_for_any_batch_size(fmt):
    module = MixedClassifier(4, 3).eval()
    sample = SPEC.sample_inputs()
    payload = (to_torchscript(module, sample) if fmt == "torchscript"
               else to_onnx(module, sample, SPEC.feature_cols))
    runner = ModelRunner(fmt, payload, SPEC.feature_cols, num_threads=1)
    for batch in (1, 7, 300):
        inputs = SPEC.sample_inputs(batch=batch, seed=batch)
        with torch.no_grad():
            want = module(*inputs).numpy()
        got = runner.predict([t.numpy() for t in inputs])
        np.testing.assert_allclose(got, want, atol=1e-6)
    import pickle
    clone = pickle.loads(pickle.dumps(runner))  # what ships to a worker: bytes, no session
    assert clone._model is None and clone.model_bytes == payload


def test_check_onnx_detects_a_disagreeing_export():
    module = DataDependent()
    sample = [torch.ones(2, 1)]
    payload = to_onnx(module, sample, ["x"])
    check_onnx(payload, module, sample, ["x"])  # agrees on the sample it was traced with
    with pytest.raises(ModelExportError, match="disagrees with the torch module"):
        check_onnx(payload, module, [-torch.ones(2, 1)], ["x"])


def test_write_and_read_model_dir(tmp_path):
    write_model_dir(str(tmp_path), "torchscript", b"bytes", SPEC, {"input_names": ["x", "v"]})
    saved = read_model_dir(str(tmp_path))  # signed with this user's model key
    assert saved.spec == SPEC and saved.model_bytes == b"bytes"
    meta = json.loads((tmp_path / "metadata.json").read_text())
    for key in ("format", "library_version", "torch_version", "sha256", "signature",
                "features", "prediction_col", "prediction_type", "output_width"):
        assert key in meta, key
    write_model_dir(str(tmp_path), "onnx", b"bytes", SPEC, overwrite=True)
    with pytest.raises(ModelFormatError, match="not an ONNX model"):  # checked on load
        read_model_dir(str(tmp_path))
    assert "onnx_version" in json.loads((tmp_path / "metadata.json").read_text())
    (tmp_path / "model.onnx").write_bytes(b"other")
    with pytest.raises(ChecksumMismatchError):
        read_model_dir(str(tmp_path))
    os.remove(tmp_path / "model.onnx")
    with pytest.raises(ModelFormatError, match="is missing"):
        read_model_dir(str(tmp_path))


def test_metadata_must_be_an_object_with_a_version(tmp_path):
    write_model_dir(str(tmp_path), "torchscript", b"x", SPEC)
    (tmp_path / "metadata.json").write_text("[1, 2]")
    with pytest.raises(ModelFormatError, match="corrupt"):
        read_model_dir(str(tmp_path))
    (tmp_path / "metadata.json").write_text("{}")
    with pytest.raises(ModelFormatError, match="metadata_version"):
        read_model_dir(str(tmp_path))
