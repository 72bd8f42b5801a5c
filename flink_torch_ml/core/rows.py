"""What a valid row is, and how column values become numpy arrays and torch tensors: the one
place every path reads feature and label columns through (a fit's feed, online training,
batch scoring, model-stream scoring, a custom entry's input).

A *column* is any sequence of one column's values: a pandas Series from Flink's Arrow
batches, a numpy array, or a list of Python values (the per-row paths). The rule, in
:func:`invalid_rows`: a row is invalid when
- a numeric column holds NULL or NaN,
- an array column holds NULL, an array holding NULL or NaN, or (when the column's ``width`` is
  known) an array of another length,
- a BOOLEAN column holds NULL.
STRING columns may hold NULL (a custom entry gets ``None``). :func:`check_rows` raises the
rule's :class:`InvalidDataError`, naming the column, what it holds and in how many rows.

The column rule, :func:`check_columns`, is the table-level half: the columns a model reads
exist, have feature types, and do not collide with the columns it writes.

Free of Flink: numpy and torch only.
"""

from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidDataError, SchemaError, UnsupportedTypeError
from .types import FEATURE_TYPES, DataType

__all__ = ["Column", "TRAINING_ADVICE", "SCORING_ADVICE", "check_columns", "invalid_rows",
           "check_rows", "with_common_widths", "column_arrays", "feature_arrays",
           "rows_to_columns", "to_tensor", "model_float_dtype"]


#: what the row rule's error tells a user whose training input breaks it
TRAINING_ADVICE = "filter or fill such rows before training"
#: ... and a user scoring such rows
SCORING_ADVICE = "clean the data, or set handle_invalid='skip' to drop such rows"


@dataclass(frozen=True)
class Column:
    """One column as the rule sees it: its name, type and, for arrays, the length every row
    must have (None: any length). ``role`` names it in errors ("Feature", "Label", "Input").
    A model's ``FeatureSpec`` has the same fields and can stand in for it."""

    name: str
    data_type: DataType
    width: Optional[int] = None
    role: str = "Input"


# ---------------------------------------------------------------------- the column rule
def check_columns(names: Sequence[str], type_of: Callable[[str], DataType],
                  features: Sequence[str], label: Optional[str] = None,
                  extra: Sequence[str] = (), outputs: Sequence[Tuple[str, str]] = ()
                  ) -> Tuple[List[DataType], Optional[DataType]]:
    """Check a table's columns (``names``; ``type_of(name)`` gives a present column's type)
    for a model reading ``features`` (and ``label``, and ``extra`` columns of any type) and
    writing ``outputs`` (``(column, parameter naming it)`` pairs). Returns the features' and
    the label's types; raises SchemaError or UnsupportedTypeError saying what to change."""
    present = set(names)
    for role, wanted in (("Feature", list(features)), ("Label", [label] if label else []),
                         ("", list(extra))):
        missing = [c for c in wanted if c not in present]
        if missing:
            what = f"{role} column(s)" if role else "Column(s)"
            raise SchemaError(f"{what} {', '.join(map(repr, missing))} not found in the "
                              f"table; its columns are: {', '.join(names)}")
    if label is not None and label in features:
        raise SchemaError(f"label_col {label!r} is also a feature column")
    for column, param in outputs:
        if column in present:
            raise SchemaError(f"The table already has a column {column!r}; set {param} to a "
                              f"new name")
    feature_types = []
    for column in features:
        data_type = type_of(column)
        if data_type not in FEATURE_TYPES:
            raise UnsupportedTypeError(f"Feature column {column!r} is {data_type.type_name}; "
                                       f"features must be FLOAT, DOUBLE, INT, BIGINT, "
                                       f"ARRAY<FLOAT> or ARRAY<DOUBLE>")
        feature_types.append(data_type)
    label_type = None
    if label is not None:
        label_type = type_of(label)
        if label_type not in FEATURE_TYPES:
            raise UnsupportedTypeError(f"Label column {label!r} is {label_type.type_name}; a "
                                       f"label must be a float or integer scalar or a float "
                                       f"array")
    return feature_types, label_type


# ---------------------------------------------------------------------- the row rule
def _problems(values, column) -> List[tuple]:
    """(kind, mask) pairs of what is wrong in one column, a mask per kind."""
    data_type = column.data_type
    rows = len(values)
    if data_type is DataType.STRING or rows == 0:
        return []
    if not data_type.is_array:
        return [(_null_word(data_type), _scalar_invalid(values))]
    array = values if isinstance(values, np.ndarray) and values.ndim == 2 else None
    width = getattr(column, "width", None)
    if array is not None:  # already stacked: no NULLs, one length
        wrong = np.full(rows, width is not None and array.shape[1] != width)
        bad = np.isnan(array).any(axis=1) if array.dtype.kind == "f" else np.zeros(rows, bool)
        return [("NULL", np.zeros(rows, bool)), (_length_word(array.shape[1]), wrong),
                ("NULL or NaN array elements", bad)]
    items = values.to_numpy() if hasattr(values, "to_numpy") else list(values)
    lengths = np.fromiter((-1 if v is None else len(v) for v in items), np.int64, rows)
    null = lengths < 0
    wrong = ~null & (lengths != width) if width is not None else np.zeros(rows, bool)
    bad = np.zeros(rows, bool)
    whole = np.flatnonzero(~null & ~wrong)
    if whole.size:
        try:  # one vectorized check when the arrays are of one length and hold no None
            stacked = np.stack([np.asarray(items[i], dtype=np.float64) for i in whole]) \
                if width is not None or len(set(lengths[whole])) == 1 else None
        except (TypeError, ValueError):
            stacked = None
        if stacked is not None:
            bad[whole] = np.isnan(stacked).any(axis=1) if stacked.ndim == 2 else False
        else:
            for i in whole:
                try:
                    bad[i] = bool(np.isnan(np.asarray(items[i], dtype=np.float64)).any())
                except (TypeError, ValueError):  # a None element
                    bad[i] = True
    first_wrong = int(lengths[wrong][0]) if wrong.any() else 0
    return [("NULL", null), (_length_word(first_wrong), wrong),
            ("NULL or NaN array elements", bad)]


def _scalar_invalid(values) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return np.isnan(array)
    if array.dtype.kind in "iub":
        return np.zeros(len(array), bool)
    return np.fromiter((v is None or (isinstance(v, float) and v != v) for v in array), bool,
                       len(array))


def _null_word(data_type: DataType) -> str:
    return "NULL or NaN" if data_type.is_floating else "NULL"


def _length_word(length: int) -> str:
    return f"an array of length {length}"


def invalid_rows(columns: Sequence, specs: Sequence) -> np.ndarray:
    """Per row, True when any of ``columns`` (described by ``specs``: Columns or
    FeatureSpecs) breaks the rule (see the module's docstring)."""
    rows = len(columns[0]) if len(columns) else 0
    bad = np.zeros(rows, dtype=bool)
    for values, spec in zip(columns, specs):
        for _, mask in _problems(values, spec):
            bad |= mask
    return bad


def check_rows(columns: Sequence, specs: Sequence, advice: str = "", where: str = "") -> None:
    """Raise InvalidDataError for the first column with invalid rows: what it holds, in how
    many rows (``where`` says where, e.g. " (rank 1)"; ``advice`` what to do)."""
    for values, spec in zip(columns, specs):
        for kind, mask in _problems(values, spec):
            count = int(mask.sum())
            if not count:
                continue
            role = getattr(spec, "role", "Feature")
            expected = f"; it expects arrays of length {spec.width}" \
                if kind.startswith("an array") else ""
            raise InvalidDataError(
                f"{role} column {spec.name!r} holds {kind} in {count} of {len(values)} rows"
                f"{where}{expected}" + (f"; {advice}" if advice else ""))


def with_common_widths(columns: Sequence, specs: Sequence) -> list:
    """``specs`` with each array column of unknown width given its most common length in
    ``columns``: where every row must be alike (a fit's features), rows of another length
    then break the rule."""
    out = []
    for values, spec in zip(columns, specs):
        if spec.data_type.is_array and getattr(spec, "width", None) is None and len(values):
            if isinstance(values, np.ndarray) and values.ndim == 2:
                spec = replace(spec, width=int(values.shape[1]))
            else:
                lengths = Counter(len(v) for v in values if v is not None)
                if lengths:
                    spec = replace(spec, width=lengths.most_common(1)[0][0])
        out.append(spec)
    return out


# ---------------------------------------------------------------------- conversions
def column_arrays(columns: Sequence, specs: Sequence) -> List[np.ndarray]:
    """Columns as numpy, for a worker's shard: ``[rows]`` for scalars (strings as objects),
    ``[rows, n]`` for arrays of one length, else a ``[rows]`` object array of 1-d arrays."""
    arrays = []
    for values, spec in zip(columns, specs):
        data_type = spec.data_type
        if data_type is DataType.STRING:
            arrays.append(np.asarray(values, dtype=object))
        elif data_type.is_array:
            arrays.append(_stack(values, data_type.numpy_dtype, ragged=True))
        else:
            arrays.append(np.asarray(values, dtype=data_type.numpy_dtype))
    return arrays


def feature_arrays(columns: Sequence, specs: Sequence) -> List[np.ndarray]:
    """Valid feature columns as the model reads them: one contiguous ``[rows, width]`` array
    each, of the spec's ``input_dtype`` (a FeatureSpec's; else the column type's)."""
    arrays = []
    for values, spec in zip(columns, specs):
        dtype = np.dtype(getattr(spec, "input_dtype", None) or spec.data_type.numpy_dtype)
        rows = len(values)
        if spec.data_type.is_array:
            width = spec.width or 0
            array = _stack(values, dtype, ragged=False) if rows else np.empty((0, width), dtype)
        else:
            array = np.asarray(values, dtype=dtype).reshape(rows, 1)
        arrays.append(np.ascontiguousarray(array))
    return arrays


def _stack(values, dtype, ragged: bool) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        return values.astype(dtype, copy=False)
    items = [np.asarray(v, dtype=dtype) for v in
             (values.to_numpy() if hasattr(values, "to_numpy") else values)]
    if not items:
        return np.empty((0, 0), dtype)
    if len({len(v) for v in items}) == 1:
        return np.stack(items)
    if not ragged:
        raise InvalidDataError("arrays of different lengths cannot be stacked")
    column = np.empty(len(items), dtype=object)
    column[:] = items
    return column


def rows_to_columns(rows: Sequence[Sequence], positions: Sequence[int]) -> List[list]:
    """The values at ``positions`` of each row, column by column (per-row paths)."""
    return [[row[p] for row in rows] for p in positions]


def model_float_dtype(model):
    """The torch dtype of a module's floating parameters (float32 when it has none)."""
    import torch

    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def to_tensor(column: np.ndarray, data_type: DataType, float_dtype, is_label: bool):
    """A valid column as the tensor training feeds the model: floats (scalars ``[rows, 1]``,
    arrays ``[rows, n]``) in the model's float dtype; integer features ``[rows, 1]`` int64;
    an integer label ``[rows]`` int64 (class indices, what cross-entropy expects)."""
    import torch

    if data_type.is_floating:
        tensor = torch.from_numpy(np.asarray(column, dtype=data_type.numpy_dtype)).to(
            float_dtype)
        return tensor.unsqueeze(1) if tensor.dim() == 1 else tensor
    tensor = torch.from_numpy(np.asarray(column, dtype=np.int64))
    return tensor if is_label else tensor.unsqueeze(1)
