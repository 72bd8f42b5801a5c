import numpy as np
import pandas as pd
import pytest

from flink_torch_ml import DataType, InvalidDataError
from flink_torch_ml.core.rows import SCORING_ADVICE, check_rows, feature_arrays
from flink_torch_ml.core.runner import prediction_values
from flink_torch_ml.core.spec import FeatureSpec, ModelSpec
from flink_torch_ml.worker.predict import prediction_series


def feature_array(series, feature, check_invalid=True):
    """One column through the scoring UDF's steps: the row rule, then the model's array."""
    if check_invalid:
        check_rows([series], [feature], SCORING_ADVICE)
    return feature_arrays([series], [feature])[0]


def output_to_series(output, rows, spec):
    return prediction_series(prediction_values(output, rows, spec), spec)


def scalar(name="x", dtype="float32", data_type=DataType.FLOAT_64):
    return FeatureSpec(name, data_type, 1, dtype)


def array(name="v", width=3):
    return FeatureSpec(name, DataType.FLOAT_32_ARRAY, width, "float32")


def test_scalar_column_becomes_contiguous_column_vector_of_model_dtype():
    out = feature_array(pd.Series([1.0, 2.0, 3.0]), scalar())
    assert out.shape == (3, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3])


def test_int_column_to_int64_indices():
    out = feature_array(pd.Series([1, 2], dtype="int32"), scalar("i", "int64", DataType.INT_32))
    assert out.dtype == np.int64 and out.tolist() == [[1], [2]]


def test_array_column_is_stacked():
    series = pd.Series([np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)])
    out = feature_array(series, array())
    assert out.shape == (2, 3) and out[1, 2] == 6


@pytest.mark.parametrize("values", [[1.0, None, 3.0], [1.0, float("nan"), 3.0]])
def test_null_or_nan_scalar_raises_naming_column(values):
    with pytest.raises(InvalidDataError, match="Feature column 'x' holds NULL or NaN in 1 of 3"):
        feature_array(pd.Series(values), scalar())


def test_null_check_can_be_disabled_for_skip_mode():
    assert feature_array(pd.Series([1.0, 2.0]), scalar(), check_invalid=False).shape == (2, 1)


def test_null_array_and_wrong_length_array_raise():
    with pytest.raises(InvalidDataError, match="'v' holds NULL in 1 of 2"):
        feature_array(pd.Series([np.zeros(3), None]), array())
    with pytest.raises(InvalidDataError, match="'v' holds an array of length 2 in 1 of 2 rows; "
                                               "it expects arrays of length 3"):
        feature_array(pd.Series([np.zeros(3), np.zeros(2)]), array())
    with pytest.raises(InvalidDataError, match="NaN array elements"):
        feature_array(pd.Series([np.zeros(3), np.array([0, np.nan, 0])]), array())


def test_lengths_that_sum_right_still_fail():
    # [2, 4] elements sum to 2 * 3, a naive concatenate+reshape would silently mix rows
    with pytest.raises(InvalidDataError, match="length"):
        feature_array(pd.Series([np.zeros(2), np.zeros(4)]), array())


def test_output_to_series_scalar_and_array():
    spec = ModelSpec((scalar(),), "p", DataType.FLOAT_32, 1)
    s = output_to_series(np.array([[1.5], [2.5]], np.float32), 2, spec)
    assert s.tolist() == [1.5, 2.5]
    spec = ModelSpec((scalar(),), "p", DataType.FLOAT_32_ARRAY, 2)
    s = output_to_series(np.arange(4, dtype=np.float32).reshape(2, 2), 2, spec)
    assert [list(v) for v in s] == [[0, 1], [2, 3]]
    with pytest.raises(InvalidDataError, match="returned 2 values per row"):
        output_to_series(np.zeros((2, 2), np.float32), 2, ModelSpec((), "p", DataType.FLOAT_32))
    with pytest.raises(InvalidDataError, match="first dimension must be the batch"):
        output_to_series(np.zeros((3,), np.float32), 2, ModelSpec((), "p", DataType.FLOAT_32))


def test_invalid_rows_finds_null_nan_and_bad_arrays():
    from flink_torch_ml.core.rows import invalid_rows

    spec = ModelSpec((scalar("x"), array("v", 2)), "p", DataType.FLOAT_64, 1).features
    x = pd.Series([1.0, None, float("nan"), 4.0, 5.0, 6.0, 7.0])
    v = pd.Series([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], None, [1.0], [1.0, float("nan")],
                   [1.0, None]])
    assert invalid_rows([x, v], spec).tolist() == [False, True, True, True, True, True, True]


@pytest.mark.parametrize("values,dtype", [([1.5, 2.5], "float32"), ([1, 2], "int64")])
def test_spread_output_puts_null_where_rows_were_skipped(values, dtype):
    import pyarrow as pa

    from flink_torch_ml.worker.predict import spread_output

    keep = np.array([True, False, True, False])
    full = spread_output(pd.Series(np.array(values, dtype=dtype)), keep)
    arrow = pa.Array.from_pandas(full, mask=full.isnull(),  # as PyFlink converts it
                                 type=pa.float32() if dtype == "float32" else pa.int64())
    assert arrow.to_pylist() == [values[0], None, values[1], None]


def _skipping_udf(module, spec):
    from flink_torch_ml.core.export import to_torchscript
    from flink_torch_ml.core.runner import ModelRunner
    from flink_torch_ml.worker.predict import PredictFunction

    runner = ModelRunner("torchscript", to_torchscript(module, spec.sample_inputs()),
                         spec.feature_cols, num_threads=1)
    runner.open(1)
    return PredictFunction(runner, spec, check_invalid=False)


def test_skip_mode_scores_valid_rows_only_and_refuses_nan_predictions():
    import torch

    spec = ModelSpec((scalar("a"), scalar("b")), "p", DataType.FLOAT_32, 1)

    class Sum(torch.nn.Module):
        def forward(self, a, b):
            return 2 * a + b

    function = _skipping_udf(Sum(), spec)
    a, b = pd.Series([1.0, None, 3.0, float("nan")]), pd.Series([2.0, 1.0, 4.0, 1.0])
    out = function.eval(a, b)
    want = [4.0, 10.0]
    assert out.isna().tolist() == [False, True, False, True]
    np.testing.assert_allclose(out[[0, 2]].to_numpy(dtype=np.float32), want, rtol=1e-6)
    assert function.eval(pd.Series([None, None]), pd.Series([1.0, 2.0])).isna().all()

    class Log(torch.nn.Module):
        def forward(self, a, b):
            return torch.log(a - b)

    function = _skipping_udf(Log(), spec)
    with pytest.raises(InvalidDataError, match="returned NaN for 1 of 2 rows whose features"):
        function.eval(pd.Series([1.0, 2.0, None]), pd.Series([2.0, 1.0, 0.0]))
