"""Saved models as SQL functions (flink_torch_ml.sql), without a JVM: how a function name
becomes a model directory, and the errors that name the function and the path."""

import pytest

import flink_torch_ml.sql as sql
from flink_torch_ml import (ConfigurationError, ModelFormatError, PyTorchModel,
                            UntrustedArtifactError)
from tests.models import AddFive


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "key"))
    root = tmp_path / "models"
    PyTorchModel(AddFive(), feature_cols=["x"], prediction_col="y",
                 feature_widths=[1]).save(str(root / "add_five"), format="onnx")
    PyTorchModel(AddFive(), feature_cols=["x"], prediction_col="y",
                 feature_widths=[1]).save(str(root / "add_five_ts"))
    monkeypatch.setenv(sql.MODELS_VARIABLE, str(root))
    return root


def test_a_function_name_is_a_saved_model_under_the_models_directory(models):
    function = getattr(sql, "add_five")  # what Flink's Python function factory does
    assert type(function).__name__ == "UserDefinedScalarFunctionWrapper"
    assert function._func_type == "pandas"  # vectorized, as transform
    assert getattr(sql, "add_five_ts") is not None  # TorchScript this user signed


def test_without_the_setting_the_error_names_the_variable_and_the_function(monkeypatch):
    monkeypatch.delenv(sql.MODELS_VARIABLE, raising=False)
    with pytest.raises(ConfigurationError, match="FLINK_TORCH_ML_SQL_MODELS.*add_five"):
        sql.model_function("add_five")


def test_a_missing_model_names_the_function_the_path_and_what_is_there(models):
    with pytest.raises(ModelFormatError) as error:
        getattr(sql, "add_six")
    message = str(error.value)
    assert "flink_torch_ml.sql.add_six" in message and str(models / "add_six") in message
    assert "add_five" in message and "add_five_ts" in message  # the models there


@pytest.mark.parametrize("name", ["..", "."])
def test_a_name_cannot_leave_the_models_directory(models, name):
    with pytest.raises(ConfigurationError, match="not a directory name"):
        sql.model_function(name)


def test_a_corrupt_model_is_refused_naming_the_function_and_the_path(models):
    (models / "add_five" / "metadata.json").write_text("{ not json")
    with pytest.raises(ModelFormatError, match=r"flink_torch_ml\.sql\.add_five.*add_five"):
        sql.model_function("add_five")


def test_torchscript_signed_by_someone_else_needs_the_trusted_setting(models, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("FLINK_TORCH_ML_MODEL_KEY", str(tmp_path / "another-key"))
    with pytest.raises(UntrustedArtifactError, match="flink_torch_ml.sql.add_five_ts"):
        sql.model_function("add_five_ts")
    monkeypatch.setenv(sql.TRUSTED_VARIABLE, "true")
    assert sql.model_function("add_five_ts") is not None
    assert sql.model_function("add_five") is not None  # ONNX needs no trust
