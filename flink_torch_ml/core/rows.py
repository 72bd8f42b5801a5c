"""Columnar batches <-> model tensors: stack pandas/Arrow feature columns into contiguous numpy
arrays (one per feature, ``[batch, width]``), validate them, and turn model outputs back into a
column. Shared by the inference UDFs and the training runtime.
"""

from typing import List, Sequence

import numpy as np
import pandas as pd

from ..errors import InvalidDataError
from .spec import FeatureSpec, ModelSpec

__all__ = ["feature_array", "features_to_arrays", "invalid_rows", "output_to_series",
           "spread_output"]


def feature_array(series: pd.Series, feature: FeatureSpec, check_invalid: bool = True,
                  dtype=None) -> np.ndarray:
    """One feature column as a ``[rows, width]`` array of the model's input dtype.

    Raises InvalidDataError naming the column for NULL/NaN values (when ``check_invalid``) and,
    always, for arrays whose length differs from the feature's width.
    """
    dtype = np.dtype(dtype or feature.input_dtype)
    rows = len(series)
    if feature.data_type.is_array:
        values = series.to_numpy()
        lengths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, rows)
        if (lengths < 0).any():
            _raise_null(feature.name, int((lengths < 0).sum()), rows, "NULL")
        wrong = lengths != feature.width
        if wrong.any():
            raise InvalidDataError(
                f"Feature column {feature.name!r} holds an array of length "
                f"{int(lengths[wrong][0])} in {int(wrong.sum())} of {rows} rows; the model "
                f"expects arrays of length {feature.width}")
        array = (np.stack(values).astype(dtype, copy=False) if rows
                 else np.empty((0, feature.width), dtype))
    else:
        if check_invalid:
            nulls = series.isna().to_numpy()
            if nulls.any():
                _raise_null(feature.name, int(nulls.sum()), rows, "NULL or NaN")
        array = series.to_numpy(dtype=dtype).reshape(rows, 1)
    if check_invalid and dtype.kind == "f" and feature.data_type.is_array:
        bad = np.isnan(array).any(axis=1)
        if bad.any():
            _raise_null(feature.name, int(bad.sum()), rows, "NULL or NaN array elements")
    return array


def _raise_null(column: str, count: int, rows: int, what: str) -> None:
    raise InvalidDataError(
        f"Feature column {column!r} holds {what} in {count} of {rows} rows of a batch; clean "
        f"the data, or set handle_invalid='skip' to drop rows with NULL features")


def invalid_rows(series: Sequence[pd.Series], spec: ModelSpec) -> np.ndarray:
    """Which rows of a batch ``handle_invalid='skip'`` drops: a NULL or NaN feature, or an
    array feature that is NULL, of the wrong length, or holds a NULL or NaN element."""
    rows = len(series[0]) if series else 0
    bad = np.zeros(rows, dtype=bool)
    for column, feature in zip(series, spec.features):
        if not feature.data_type.is_array:
            bad |= column.isna().to_numpy()
            continue
        values = column.to_numpy()
        lengths = np.fromiter((-1 if v is None else len(v) for v in values), np.int64, rows)
        wrong = lengths != feature.width
        bad |= wrong
        whole = np.flatnonzero(~wrong)
        if not whole.size:
            continue
        try:  # one vectorized check; an array holding None does not convert
            bad[whole] |= np.isnan(np.stack(values[whole]).astype(np.float64)).any(axis=1)
        except (TypeError, ValueError):
            for i in whole:
                try:
                    bad[i] |= bool(np.isnan(np.asarray(values[i], dtype=np.float64)).any())
                except (TypeError, ValueError):  # a None element
                    bad[i] = True
    return bad


def spread_output(valid: pd.Series, keep: np.ndarray) -> pd.Series:
    """A result column for every row of a batch from the results of its ``keep`` rows: the
    others get NULL (Flink then drops them)."""
    if valid.dtype.kind == "f":  # NaN is NULL to Flink's Arrow conversion
        full = np.full(len(keep), np.nan, dtype=valid.dtype)
        full[keep] = valid.to_numpy()
        return pd.Series(full)
    full = np.full(len(keep), None, dtype=object)
    full[np.flatnonzero(keep)] = valid.to_numpy(dtype=object)
    return pd.Series(full, dtype=object)


def features_to_arrays(series: Sequence[pd.Series], spec: ModelSpec,
                       check_invalid: bool = True) -> List[np.ndarray]:
    """All feature columns of a batch, in ``forward`` order."""
    return [feature_array(s, f, check_invalid) for s, f in zip(series, spec.features)]


def output_to_series(output: np.ndarray, rows: int, spec: ModelSpec) -> pd.Series:
    """A model output of shape ``[rows]``, ``[rows, 1]`` or ``[rows, k]`` as a result column."""
    if output.ndim == 0 or output.shape[0] != rows:
        raise InvalidDataError(f"The model returned shape {tuple(output.shape)} for a batch of "
                               f"{rows} rows; the first dimension must be the batch")
    width = int(np.prod(output.shape[1:], dtype=np.int64))
    if width != spec.output_width:
        raise InvalidDataError(f"The model returned {width} values per row; "
                               f"'{spec.prediction_col}' expects {spec.output_width}")
    dtype = spec.prediction_type.numpy_dtype
    if spec.prediction_type.is_array:
        return pd.Series(list(output.reshape(rows, width).astype(dtype, copy=False)))
    return pd.Series(output.reshape(rows).astype(dtype, copy=False))
