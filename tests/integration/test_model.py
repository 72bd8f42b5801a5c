"""PyTorchModel on a real PyFlink mini-cluster: transform, save/load in both formats, streaming
tables and every bad input the issue lists."""

import json
import os

import numpy as np
import pytest
import torch
from pyflink.table import DataTypes
from pyflink.table.expressions import col

from flink_torch_ml import (ChecksumMismatchError, ModelFormatError, NotFittedError,
                            PyTorchModel, SchemaError, UnsupportedTypeError)
from flink_torch_ml._compat import table_columns
from tests.models import (ArrayToScalar, EmbeddingModel, MixedClassifier, ScalarRegressor)

FORMATS = ["torchscript", "onnx"]
N = 40


def make_table(env, columns, rows):
    schema = DataTypes.ROW([DataTypes.FIELD(name, t) for name, t in columns])
    return env.from_elements(rows, schema)


def scalar_table(env, n=N):
    rng = np.random.default_rng(0)
    rows = [(i, float(a), float(b)) for i, (a, b) in enumerate(rng.normal(size=(n, 2)))]
    return make_table(env, [("id", DataTypes.INT()), ("x1", DataTypes.FLOAT()),
                            ("x2", DataTypes.DOUBLE())], rows), rows


def mixed_table(env, n=N, width=4):
    rng = np.random.default_rng(1)
    rows = [(i, float(rng.normal()), [float(v) for v in rng.normal(size=width)])
            for i in range(n)]
    return make_table(env, [("id", DataTypes.INT()), ("x", DataTypes.DOUBLE()),
                            ("v", DataTypes.ARRAY(DataTypes.FLOAT()))], rows), rows


def by_id(table):
    return table.to_pandas().sort_values("id").reset_index(drop=True)


def expected(module, *columns):
    tensors = [torch.tensor(np.asarray(c, dtype=np.float32)).reshape(len(c), -1) for c in columns]
    with torch.no_grad():
        return module.eval()(*tensors).numpy()


def assert_close(got, want):
    got = np.stack(got.to_numpy()) if got.dtype == object else got.to_numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ correctness

def test_scalar_features_scalar_output_in_memory(batch_env):
    table, rows = scalar_table(batch_env)
    module = ScalarRegressor()
    result = PyTorchModel(module, ["x1", "x2"]).transform(table)[0]
    assert table_columns(result)[0] == ["id", "x1", "x2", "prediction"]
    assert table_columns(result)[1][-1] == DataTypes.FLOAT()
    frame = by_id(result)
    assert len(frame) == N
    assert_close(frame["prediction"], expected(module, [r[1] for r in rows],
                                               [r[2] for r in rows]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_scalar_model_transforms_like_torch(batch_env, tmp_path, fmt):
    table, rows = scalar_table(batch_env)
    module = ScalarRegressor()
    PyTorchModel(module, ["x1", "x2"], "y_hat").save(str(tmp_path / "m"), format=fmt)
    loaded = PyTorchModel.load(batch_env, str(tmp_path / "m"))
    assert loaded.get_feature_cols() == ("x1", "x2")
    frame = by_id(loaded.transform(table)[0])
    assert_close(frame["y_hat"], expected(module, [r[1] for r in rows], [r[2] for r in rows]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_array_model_gives_array_probabilities(batch_env, tmp_path, fmt):
    table, rows = mixed_table(batch_env)
    module = MixedClassifier(n=4, k=3)
    PyTorchModel(module, ["x", "v"], feature_widths=[1, 4]).save(str(tmp_path / "m"), format=fmt)
    result = PyTorchModel.load(batch_env, str(tmp_path / "m")).transform(table)[0]
    assert table_columns(result)[1][-1] == DataTypes.ARRAY(
        DataTypes.FLOAT())
    frame = by_id(result)
    want = expected(module, [r[1] for r in rows], [r[2] for r in rows])
    assert want.shape == (N, 3)
    assert_close(frame["prediction"], want)
    np.testing.assert_allclose(np.stack(frame["prediction"]).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_array_feature_squeezed_output(batch_env, tmp_path, fmt):
    table, rows = mixed_table(batch_env)
    module = ArrayToScalar(4)
    PyTorchModel(module, "v", feature_widths=[4]).save(str(tmp_path / "m"), format=fmt)
    frame = by_id(PyTorchModel.load(batch_env, str(tmp_path / "m")).transform(
        table.select(col("id"), col("v")))[0])
    assert_close(frame["prediction"], expected(module, [r[2] for r in rows]))


def test_array_width_inferred_from_batch_table_then_saved(batch_env, tmp_path):
    table, rows = mixed_table(batch_env, width=6)
    module = ArrayToScalar(6)
    model = PyTorchModel(module, ["v"])
    frame = by_id(model.transform(table)[0])  # infers width 6 from the first row
    assert_close(frame["prediction"], expected(module, [r[2] for r in rows]))
    model.save(str(tmp_path / "m"), format="onnx")
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["features"] == [{"name": "v", "type": "FLOAT_32_ARRAY", "width": 6,
                                 "input_dtype": "float32"}]


def test_integer_column_as_embedding_index_and_double_prediction_override(batch_env, tmp_path):
    rows = [(i, i % 10, float(i) / 7) for i in range(N)]
    table = make_table(batch_env, [("id", DataTypes.INT()), ("k", DataTypes.BIGINT()),
                                   ("x", DataTypes.DOUBLE())], rows)
    module = EmbeddingModel()
    model = PyTorchModel(module, ["k", "x"], prediction_type="FLOAT_64")
    result = model.transform(table)[0]
    assert table_columns(result)[1][-1] == DataTypes.DOUBLE()
    with torch.no_grad():
        want = module(torch.tensor([[r[1]] for r in rows]),
                      torch.tensor([[r[2]] for r in rows], dtype=torch.float32)).numpy()
    assert_close(by_id(result)["prediction"], want)
    model.save(str(tmp_path / "m"), format="onnx")
    assert_close(by_id(PyTorchModel.load(batch_env, str(tmp_path / "m")).transform(table)[0])[
        "prediction"], want)


def test_float64_model_gives_double_column(batch_env):
    table, rows = scalar_table(batch_env)
    module = ScalarRegressor().double()
    result = PyTorchModel(module, ["x1", "x2"]).transform(table)[0]
    assert table_columns(result)[1][-1] == DataTypes.DOUBLE()
    with torch.no_grad():
        want = module(torch.tensor([[r[1]] for r in rows], dtype=torch.float64),
                      torch.tensor([[r[2]] for r in rows], dtype=torch.float64)).numpy()
    # FLOAT column x1 holds float32 values; compare at float32 precision
    np.testing.assert_allclose(by_id(result)["prediction"].to_numpy(), want[:, 0], atol=1e-5)


@pytest.mark.parametrize("fmt", FORMATS)
def test_streaming_table(stream_env, tmp_path, fmt):
    table, rows = mixed_table(stream_env)
    module = MixedClassifier(n=4, k=3)
    PyTorchModel(module, ["x", "v"], feature_widths=[1, 4]).save(str(tmp_path / "m"), format=fmt)
    result = PyTorchModel.load(stream_env, str(tmp_path / "m")).transform(table)[0]
    frame = by_id(result)
    assert_close(frame["prediction"], expected(module, [r[1] for r in rows],
                                               [r[2] for r in rows]))


def test_streaming_datagen_source(stream_env):
    stream_env.execute_sql("""
        CREATE TEMPORARY TABLE gen (x1 FLOAT, x2 DOUBLE) WITH (
          'connector' = 'datagen', 'number-of-rows' = '500', 'rows-per-second' = '100000',
          'fields.x1.min' = '-1', 'fields.x1.max' = '1', 'fields.x2.min' = '-1',
          'fields.x2.max' = '1')""")
    module = ScalarRegressor()
    frame = PyTorchModel(module, ["x1", "x2"]).transform(stream_env.from_path("gen"))[0] \
        .to_pandas()
    assert len(frame) == 500
    assert_close(frame["prediction"], expected(module, frame["x1"], frame["x2"]))


def test_saving_array_model_without_table_or_widths_says_what_to_set(tmp_path):
    with pytest.raises(SchemaError, match="set feature_widths for array columns"):
        PyTorchModel(MixedClassifier(4, 3), ["x", "v"]).save(str(tmp_path / "m"))


def test_streaming_array_features_need_widths(stream_env):
    table, _ = mixed_table(stream_env)
    with pytest.raises(SchemaError, match="set feature_widths"):
        PyTorchModel(MixedClassifier(), ["x", "v"]).transform(table)


# ------------------------------------------------------------------ bad input

def test_missing_feature_column(batch_env):
    table, _ = scalar_table(batch_env)
    with pytest.raises(SchemaError, match=r"Feature column\(s\) 'nope' not found.*id, x1, x2"):
        PyTorchModel(ScalarRegressor(), ["x1", "nope"]).transform(table)


def test_unsupported_column_type(batch_env):
    table = make_table(batch_env, [("s", DataTypes.STRING()), ("d", DataTypes.DECIMAL(10, 2))],
                       [("a", None)])
    with pytest.raises(UnsupportedTypeError, match="'s' is STRING"):
        PyTorchModel(ScalarRegressor(), ["s"]).transform(table)
    with pytest.raises(UnsupportedTypeError, match="'d' has unsupported type DECIMAL"):
        PyTorchModel(ScalarRegressor(), ["d"]).transform(table)


def test_prediction_column_already_exists(batch_env):
    table, _ = scalar_table(batch_env)
    with pytest.raises(SchemaError, match="already has a column 'x2'"):
        PyTorchModel(ScalarRegressor(), ["x1", "x2"], prediction_col="x2").transform(table)


def test_model_not_set():
    with pytest.raises(NotFittedError, match="has no model"):
        PyTorchModel(feature_cols=["x"]).save("/tmp/never")
    with pytest.raises(SchemaError, match="feature_cols is not set"):
        PyTorchModel(ScalarRegressor()).save("/tmp/never")


def null_table(env):
    rows = [(1, 1.0, 2.0), (2, None, 3.0), (3, 0.5, 0.5)]
    return make_table(env, [("id", DataTypes.INT()), ("x1", DataTypes.FLOAT()),
                            ("x2", DataTypes.DOUBLE())], rows)


def test_null_feature_fails_the_job_naming_the_column(batch_env):
    result = PyTorchModel(ScalarRegressor(), ["x1", "x2"]).transform(null_table(batch_env))[0]
    with pytest.raises(Exception, match="Feature column 'x1' holds NULL or NaN in 1 of"):
        result.to_pandas()


def test_null_feature_rows_skipped_on_request(batch_env):
    module = ScalarRegressor()
    result = PyTorchModel(module, ["x1", "x2"], handle_invalid="skip").transform(
        null_table(batch_env))[0]
    frame = by_id(result)
    assert frame["id"].tolist() == [1, 3]
    assert_close(frame["prediction"], expected(module, [1.0, 0.5], [2.0, 0.5]))


def test_skip_drops_nan_and_bad_array_rows_too(batch_env):
    rows = [(0, 1.0, [1.0, 2.0, 3.0, 4.0]), (1, float("nan"), [1.0, 2.0, 3.0, 4.0]),
            (2, 1.0, [1.0, 2.0]), (3, 2.0, None), (4, 2.0, [1.0, float("nan"), 3.0, 4.0]),
            (5, 0.5, [4.0, 3.0, 2.0, 1.0])]
    table = make_table(batch_env, [("id", DataTypes.INT()), ("x", DataTypes.DOUBLE()),
                                   ("v", DataTypes.ARRAY(DataTypes.FLOAT()))], rows)
    module = MixedClassifier(4, 3).eval()
    model = PyTorchModel(module, ["x", "v"], feature_widths=[1, 4], handle_invalid="skip")
    frame = by_id(model.transform(table)[0])
    assert frame["id"].tolist() == [0, 5]
    with torch.no_grad():
        want = module(torch.tensor([[1.0], [0.5]]),
                      torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])).numpy()
    np.testing.assert_allclose(np.stack(frame["prediction"].to_numpy()), want, rtol=1e-5)


def test_array_of_wrong_length_fails_naming_column(batch_env, tmp_path):
    rows = [(0, 1.0, [1.0, 2.0, 3.0, 4.0]), (1, 1.0, [1.0, 2.0])]
    table = make_table(batch_env, [("id", DataTypes.INT()), ("x", DataTypes.DOUBLE()),
                                   ("v", DataTypes.ARRAY(DataTypes.FLOAT()))], rows)
    PyTorchModel(MixedClassifier(4, 3), ["x", "v"], feature_widths=[1, 4]).save(
        str(tmp_path / "m"))
    result = PyTorchModel.load(batch_env, str(tmp_path / "m")).transform(table)[0]
    with pytest.raises(Exception, match="'v' holds an array of length 2 .* expects arrays of "
                                        "length 4"):
        result.to_pandas()


def test_scalar_column_where_model_saved_for_array(batch_env, tmp_path):
    PyTorchModel(ArrayToScalar(4), ["v"], feature_widths=[4]).save(str(tmp_path / "m"))
    table, _ = scalar_table(batch_env)
    model = PyTorchModel.load(batch_env, str(tmp_path / "m")).set_feature_cols("x1")
    with pytest.raises(SchemaError, match="'x1' is FLOAT_32 but the model was saved for "
                                          "FLOAT_32_ARRAY"):
        model.transform(table)


def saved(tmp_path, fmt="torchscript"):
    path = str(tmp_path / "m")
    PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(path, format=fmt)
    return path


def test_missing_or_corrupt_metadata(batch_env, tmp_path):
    path = saved(tmp_path)
    meta = os.path.join(path, "metadata.json")
    with open(meta, "w") as f:
        f.write("{not json")
    with pytest.raises(ModelFormatError, match="metadata.json' is corrupt"):
        PyTorchModel.load(batch_env, path)
    os.remove(meta)
    with pytest.raises(ModelFormatError, match="metadata.json' is missing"):
        PyTorchModel.load(batch_env, path)
    with pytest.raises(ModelFormatError, match="No model directory"):
        PyTorchModel.load(batch_env, str(tmp_path / "absent"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_checksum_mismatch(batch_env, tmp_path, fmt):
    path = saved(tmp_path, fmt)
    model_file = os.path.join(path, "model.onnx" if fmt == "onnx" else "model.pt")
    with open(model_file, "r+b") as f:
        f.seek(20)
        f.write(b"\x00corrupt\x00")
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        PyTorchModel.load(batch_env, path)


@pytest.mark.parametrize("field, value, message", [
    ("format", "pickle", "unknown model format 'pickle'"),
    ("metadata_version", 99, "metadata version 99, newer than"),
    ("prediction_type", "FLOAT_16", "Unknown data type name"),
])
def test_unknown_format_newer_version_bad_field(batch_env, tmp_path, field, value, message):
    path = saved(tmp_path)
    meta_path = os.path.join(path, "metadata.json")
    meta = json.loads(open(meta_path).read())
    meta[field] = value
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ModelFormatError if field != "prediction_type" else ValueError,
                       match=message):
        PyTorchModel.load(batch_env, path)


def test_save_refuses_to_overwrite_and_rejects_unknown_format(tmp_path):
    path = saved(tmp_path)
    with pytest.raises(FileExistsError, match="already saved"):
        PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(path)
    PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(path, overwrite=True)
    with pytest.raises(ValueError, match="Unknown format 'h5'"):
        PyTorchModel(ScalarRegressor(), ["x1", "x2"]).save(str(tmp_path / "x"), format="h5")


def test_onnx_loaded_model_cannot_become_torchscript(tmp_path):
    path = saved(tmp_path, "onnx")
    with pytest.raises(Exception, match="loaded from ONNX"):
        PyTorchModel.load(None, path).save(str(tmp_path / "again"), format="torchscript")


def test_torchscript_loaded_model_can_be_exported_to_onnx(batch_env, tmp_path):
    table, rows = scalar_table(batch_env)
    module = ScalarRegressor()
    PyTorchModel(module, ["x1", "x2"]).save(str(tmp_path / "ts"))
    PyTorchModel.load(batch_env, str(tmp_path / "ts")).save(str(tmp_path / "onnx"), "onnx")
    frame = by_id(PyTorchModel.load(batch_env, str(tmp_path / "onnx")).transform(table)[0])
    assert_close(frame["prediction"], expected(module, [r[1] for r in rows],
                                               [r[2] for r in rows]))


# ------------------------------------------------------------------ SQL functions

@pytest.mark.parametrize("fmt", FORMATS)
def test_saved_model_as_sql_function(stream_env, tmp_path, fmt):
    from flink_torch_ml import register_model_function

    module = MixedClassifier(4, 3)
    PyTorchModel(module, ["x", "v"], feature_widths=[1, 4]).save(str(tmp_path / "m"), fmt)
    table, rows = mixed_table(stream_env)
    stream_env.create_temporary_view(f"mixed_{fmt}", table)
    register_model_function(stream_env, f"classify_{fmt}", str(tmp_path / "m"))
    frame = stream_env.sql_query(f"SELECT id, classify_{fmt}(x, v) AS p FROM mixed_{fmt}") \
        .to_pandas().sort_values("id")
    assert_close(frame["p"], expected(module, [r[1] for r in rows], [r[2] for r in rows]))


def test_in_memory_model_as_table_api_function(batch_env):
    table, rows = scalar_table(batch_env)
    module = ScalarRegressor()
    function = PyTorchModel(module, ["x1", "x2"]).as_function()
    frame = table.select(col("id"), function(col("x1"), col("x2")).alias("p")).to_pandas() \
        .sort_values("id")
    assert_close(frame["p"], expected(module, [r[1] for r in rows], [r[2] for r in rows]))
    with pytest.raises(ValueError, match="cannot drop rows"):
        PyTorchModel(module, ["x1", "x2"]).as_function(handle_invalid="skip")
