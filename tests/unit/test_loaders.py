"""Loading saved artifacts runs no code unless the caller trusts the path (no JVM): crafted
pipeline directories, ONNX models with external data, TorchScript that was tampered with,
and safe mode."""

import hashlib
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch

from flink_torch_ml import (ModelFormatError, PipelineModel, PyTorchModel,
                            UntrustedArtifactError)
from flink_torch_ml.core.runner import ModelRunner
from tests.models import ScalarRegressor


@pytest.fixture
def marker(tmp_path):
    """A file that only code run by a loader would create."""
    return tmp_path / "code-ran"


def _pipeline(folder, stages):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pipeline.json").write_text(json.dumps({"kind": "PipelineModel",
                                                      "stages": stages}))
    return str(folder)


def test_a_foreign_stage_class_is_refused_before_its_module_is_imported(tmp_path, marker,
                                                                        monkeypatch):
    (tmp_path / "evil_stage_module.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "class Evil:\n    @classmethod\n    def load(cls, t_env, path):\n        return cls()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "p" / "stages" / "0").mkdir(parents=True)
    path = _pipeline(tmp_path / "p", [{"module": "evil_stage_module", "class": "Evil",
                                       "path": "stages/0"}])
    with pytest.raises(UntrustedArtifactError, match="evil_stage_module.Evil.*trusted=True"):
        PipelineModel.load(None, path)
    assert not marker.exists() and "evil_stage_module" not in sys.modules


@pytest.mark.parametrize("stage_path", ["../outside", "/etc", "stages/../../outside"])
def test_a_stage_path_outside_the_directory_is_refused(tmp_path, stage_path):
    (tmp_path / "outside").mkdir()
    path = _pipeline(tmp_path / "p", [{"module": "flink_torch_ml.model",
                                       "class": "PyTorchModel", "path": stage_path}])
    with pytest.raises(UntrustedArtifactError, match="outside the pipeline's directory"):
        PipelineModel.load(None, path)


def test_a_symlink_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "p" / "stages").mkdir(parents=True)
    os.symlink(tmp_path / "outside", tmp_path / "p" / "stages" / "0")
    path = _pipeline(tmp_path / "p", [{"module": "flink_torch_ml.model",
                                       "class": "PyTorchModel", "path": "stages/0"}])
    with pytest.raises(UntrustedArtifactError, match="outside"):
        PipelineModel.load(None, path)


class _Boom:
    def __reduce__(self):
        return (open, (os.environ["FTM_MARKER"], "w"))


def test_an_estimator_stage_is_refused_unless_trusted_and_its_pickle_never_runs(tmp_path,
                                                                                marker,
                                                                                monkeypatch):
    monkeypatch.setenv("FTM_MARKER", str(marker))
    stage = tmp_path / "p" / "stages" / "0"
    stage.mkdir(parents=True)
    (stage / "estimator.json").write_text(json.dumps({"class": "PyTorchEstimator",
                                                      "params": {}}))
    (stage / "objects.pkl").write_bytes(pickle.dumps({"model": _Boom()}))
    path = _pipeline(tmp_path / "p", [{"module": "flink_torch_ml.estimator",
                                       "class": "PyTorchEstimator", "path": "stages/0"}])
    with pytest.raises(UntrustedArtifactError, match="estimator, saved with cloudpickle"):
        PipelineModel.load(None, path)
    assert not marker.exists()


def test_a_corrupt_pipeline_file_is_a_clear_error(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "pipeline.json").write_text("[" * 100000)
    with pytest.raises(ModelFormatError, match="corrupt"):
        PipelineModel.load(None, str(tmp_path / "p"))


# ---------------------------------------------------------------------- model directories
def _saved(tmp_path, fmt="torchscript"):
    path = str(tmp_path / f"model-{fmt}")
    PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(path, format=fmt)
    return path


def _rewrite(path, name, data):
    """Replace a model file and recompute its sha256, as anyone who can write it can."""
    with open(os.path.join(path, name), "wb") as f:
        f.write(data)
    meta_path = os.path.join(path, "metadata.json")
    meta = json.load(open(meta_path))
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    json.dump(meta, open(meta_path, "w"))


class _Reader(torch.nn.Module):
    """What a tampered model can do: read a file into its predictions."""

    def forward(self, x1, x2):
        return torch.from_file("/etc/hostname", size=1, dtype=torch.uint8).float() + x1


def test_torchscript_this_user_saved_loads_and_a_tampered_one_is_refused(tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "key"))
    path = _saved(tmp_path)
    assert PyTorchModel.load(None, path).model is not None  # signed with this user's key
    scripted = torch.jit.script(_Reader())
    buffer = __import__("io").BytesIO()
    torch.jit.save(scripted, buffer)
    _rewrite(path, "model.pt", buffer.getvalue())
    with pytest.raises(UntrustedArtifactError, match="did not sign"):
        PyTorchModel.load(None, path)
    assert PyTorchModel.load(None, path, trusted=True).model is not None  # the caller says so


def test_another_users_key_does_not_sign(tmp_path, monkeypatch):
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "mine"))
    path = _saved(tmp_path)
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "theirs"))
    with pytest.raises(UntrustedArtifactError, match="did not sign"):
        PyTorchModel.load(None, path)
    assert (os.stat(tmp_path / "mine").st_mode & 0o777) == 0o600


def test_safe_mode_refuses_torchscript_and_loads_onnx(tmp_path, monkeypatch):
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "key"))
    with pytest.raises(UntrustedArtifactError, match="safe loading"):
        PyTorchModel.load(None, _saved(tmp_path), trusted=False)
    model = PyTorchModel.load(None, _saved(tmp_path, "onnx"), trusted=False)
    assert model.model is None  # ONNX: nothing of torch is loaded


def _external_data_onnx(tmp_path) -> bytes:
    import onnx
    from onnx import external_data_helper

    path = _saved(tmp_path, "onnx")
    model = onnx.load(os.path.join(path, "model.onnx"))
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True,
                                                        location="weights.bin",
                                                        size_threshold=0)
    return model.SerializeToString(), path


def test_an_onnx_model_with_external_data_is_refused_before_onnxruntime_reads(tmp_path):
    data, path = _external_data_onnx(tmp_path)
    _rewrite(path, "model.onnx", data)
    for trusted in (None, False, True):
        with pytest.raises(UntrustedArtifactError, match="external data"):
            PyTorchModel.load(None, path, trusted=trusted)
    runner = ModelRunner("onnx", data, ["x1", "x2"])
    with pytest.raises(UntrustedArtifactError, match="external data"):
        runner.open(1)  # model bytes from a model-data table are checked too


def test_bytes_that_are_no_onnx_model_are_a_format_error():
    with pytest.raises(ModelFormatError, match="not an ONNX model"):
        ModelRunner("onnx", b"\x08\x01garbage" * 10, ["x"]).open(1)
    assert np is not None
