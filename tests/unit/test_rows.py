"""The one row rule (core/rows.py): what makes a row invalid, its error, and that every path
reading feature columns (a fit's feed and training loop, online training, batch scoring,
model-stream scoring) reaches the same verdict on the same rows."""

import numpy as np
import pandas as pd
import pytest
import torch
from pyflink.common import Row

from flink_torch_ml import DataType, InvalidDataError
from flink_torch_ml.core.engine import tensors
from flink_torch_ml.core.export import to_torchscript
from flink_torch_ml.core.rows import Column, check_rows, column_arrays, feature_arrays, \
    invalid_rows
from flink_torch_ml.core.runner import ModelRunner
from flink_torch_ml.core.spec import FeatureSpec, ModelSpec

X = Column("x", DataType.FLOAT_64, None, "Feature")
V = Column("v", DataType.FLOAT_32_ARRAY, 2, "Feature")
I = Column("i", DataType.INT_64, None, "Feature")
S = Column("s", DataType.STRING, None, "Input")


def test_the_rule_flags_null_nan_and_bad_arrays_and_nothing_else():
    x = [1.0, None, float("nan"), 4.0, 5.0, 6.0, 7.0, 8.0]
    v = [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], None, [1.0], [1.0, float("nan")], [1.0, None],
         [3.0, 4.0]]
    want = [False, True, True, True, True, True, True, False]
    for kind in (list, pd.Series, lambda c: np.array(c, dtype=object)):
        assert invalid_rows([kind(x), kind(v)], [X, V]).tolist() == want


def test_an_unknown_width_accepts_any_length_and_strings_may_be_null():
    ragged = Column("v", DataType.FLOAT_32_ARRAY, None)
    assert invalid_rows([[[1.0], [1.0, 2.0, 3.0]]], [ragged]).tolist() == [False, False]
    assert invalid_rows([["a", None]], [S]).tolist() == [False, False]
    assert invalid_rows([pd.Series([1, 2], dtype="int64")], [I]).tolist() == [False, False]
    stacked = np.ones((3, 2), np.float32)
    stacked[1, 0] = np.nan
    assert invalid_rows([stacked], [V]).tolist() == [False, True, False]


@pytest.mark.parametrize("values, column, message", [
    ([1.0, None, 3.0], X, "Feature column 'x' holds NULL or NaN in 1 of 3 rows"),
    ([1, None, 3], I, "Feature column 'i' holds NULL in 1 of 3 rows"),
    ([[1.0, 2.0], None], V, "Feature column 'v' holds NULL in 1 of 2 rows"),
    ([[1.0, 2.0], [1.0]], V, "'v' holds an array of length 1 in 1 of 2 rows; it expects "
                             "arrays of length 2"),
    ([[1.0, 2.0], [1.0, float("nan")]], V, "'v' holds NULL or NaN array elements in 1 of 2"),
])
def test_check_rows_names_the_column_what_and_how_many(values, column, message):
    with pytest.raises(InvalidDataError, match=message.replace("(", r"\(")):
        check_rows([values], [column], advice="clean the data")


def test_conversions_keep_shapes_and_dtypes():
    arrays = column_arrays([pd.Series([1.0, 2.0]), [[1.0, 2.0], [3.0, 4.0]], ["a", None]],
                           [X, V, S])
    assert arrays[0].dtype == np.float64 and arrays[1].shape == (2, 2)
    assert arrays[2].tolist() == ["a", None]
    ragged = column_arrays([[[1.0], [2.0, 3.0]]], [Column("r", DataType.FLOAT_32_ARRAY)])[0]
    assert ragged.dtype == object and [len(r) for r in ragged] == [1, 2]
    spec = FeatureSpec("v", DataType.FLOAT_64_ARRAY, 2, "float32")
    out = feature_arrays([pd.Series([np.array([1.0, 2.0]), np.array([3.0, 4.0])])], [spec])[0]
    assert out.shape == (2, 2) and out.dtype == np.float32 and out.flags.c_contiguous


# ---------------------------------------------------------------- one verdict, four paths
class Sum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, v):
        return self.scale * (x + v.sum(dim=1, keepdim=True))


SPEC = ModelSpec((FeatureSpec("x", DataType.FLOAT_64, 1, "float32"),
                  FeatureSpec("v", DataType.FLOAT_32_ARRAY, 2, "float32")),
                 "p", DataType.FLOAT_32, 1)

#: one batch per kind of bad value; the bad row is always the second of three
BAD = {
    "NULL scalar": ([1.0, None, 2.0], [[1.0, 1.0]] * 3, "x"),
    "NaN scalar": ([1.0, float("nan"), 2.0], [[1.0, 1.0]] * 3, "x"),
    "NULL array": ([1.0] * 3, [[1.0, 1.0], None, [1.0, 1.0]], "v"),
    "short array": ([1.0] * 3, [[1.0, 1.0], [1.0], [1.0, 1.0]], "v"),
    "NaN element": ([1.0] * 3, [[1.0, 1.0], [1.0, float("nan")], [1.0, 1.0]], "v"),
    "NULL element": ([1.0] * 3, [[1.0, 1.0], [1.0, None], [1.0, 1.0]], "v"),
}


def _series(x, v):
    return pd.Series(x, dtype="float64"), pd.Series(
        [None if a is None else np.array(a, dtype=object if None in a else np.float32)
         for a in v], dtype=object)


def _fit_path(x, v):
    """The batch fit: the feed's check and conversion, then the training loop's tensors."""
    from flink_torch_ml.worker.operators import feed_columns

    label = pd.Series([0.0, 1.0, 2.0])
    specs = [Column("x", DataType.FLOAT_64), Column("v", DataType.FLOAT_32_ARRAY),
             Column("y", DataType.FLOAT_64)]
    columns = feed_columns([*_series(x, v), label], specs)
    tensors(columns, [Column("x", DataType.FLOAT_64, None, "Feature"),
                      Column("v", DataType.FLOAT_32_ARRAY, None, "Feature")],
            Column("y", DataType.FLOAT_64, None, "Label"), torch.float32)


def _online_path(x, v):
    from flink_torch_ml.core.online import OnlineLearner, OnlineSpec

    spec = OnlineSpec(model=Sum(), loss=torch.nn.functional.mse_loss,
                      optimizer_creator=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                      feature_cols=["x", "v"], feature_types=["FLOAT_64", "FLOAT_32_ARRAY"],
                      label_col="y", label_type="FLOAT_64", global_batch_size=3, world_size=1,
                      rendezvous=None, timeout=10, heartbeat_ms=1000, model_spec={},
                      feature_widths=[1, 2])
    learner = OnlineLearner(spec, 0)
    for a, b in zip(x, v):
        learner.add((a, b), 1.0, None)
    learner._tensors(learner.buffer)


def _scoring_udf(skip):
    from flink_torch_ml.worker.predict import PredictFunction

    runner = ModelRunner("torchscript", to_torchscript(Sum(), SPEC.sample_inputs()),
                         SPEC.feature_cols, num_threads=1)
    runner.open(1)
    return PredictFunction(runner, SPEC, check_invalid=not skip)


def _stream_scorer(skip):
    from flink_torch_ml.worker.follow import FollowModelStream

    scorer = FollowModelStream(SPEC, [0, 1], None, skip, 1, 1)
    scorer.open(None)
    return scorer


class _Ctx:
    def timestamp(self):
        return None

    def get_broadcast_state(self, _):
        return {}


def _score_rows(scorer, x, v):
    scorer._runner = ModelRunner("torchscript", to_torchscript(Sum(), SPEC.sample_inputs()),
                                 SPEC.feature_cols, num_threads=1)
    scorer._version = 1
    out = []
    for a, b in zip(x, v):
        out.extend(scorer.process_element(Row(a, b), _Ctx()))
    return out


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_path_refuses_the_same_row_naming_the_same_column(kind):
    x, v, column = BAD[kind]
    paths = {
        "fit": lambda: _fit_path(x, v),
        "online": lambda: _online_path(x, v),
        "scoring": lambda: _scoring_udf(False).eval(*_series(x, v)),
        "stream scoring": lambda: _score_rows(_stream_scorer(False), x, v),
    }
    for name, path in paths.items():
        with pytest.raises(InvalidDataError, match=f"column '{column}' holds .* in 1 of") \
                as raised:
            path()
        assert raised.type is InvalidDataError or issubclass(raised.type, InvalidDataError), \
            name


@pytest.mark.parametrize("kind", sorted(BAD))
def test_the_skipping_paths_drop_the_same_row(kind):
    x, v, _ = BAD[kind]
    scored = _scoring_udf(True).eval(*_series(x, v))
    assert scored.isna().tolist() == [False, True, False]
    scorer = _stream_scorer(True)
    kept = _score_rows(scorer, x, v)
    assert [r[0] for r in kept] == [x[0], x[2]] and scorer._skipped == 1
    assert invalid_rows(list(_series(x, v)), SPEC.features).tolist() == [False, True, False]
