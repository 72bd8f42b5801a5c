"""PyTorchModel: a FlinkML-style Model that scores Flink tables with a PyTorch model.

``transform`` adds a prediction column computed by a vectorized pandas UDF; ``save`` writes
TorchScript or ONNX plus ``metadata.json``; ``load`` restores a model that scores identically.
Feature convention (as in DL-on-Flink): ``forward`` receives one ``[batch, width]`` tensor per
feature column, in ``feature_cols`` order (width 1 for a scalar column, n for an array column).
"""

import io
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pyflink.table import Table
from pyflink.table.expressions import col

from .api import Model, write_flinkml_metadata
from .data_types import DataType
from .errors import (ModelExportError, ModelFormatError, NotFittedError, SchemaError,
                     UnsupportedTypeError)
from .export import FORMATS, check_onnx, to_onnx, to_torchscript
from .inference import add_prediction_column, predict_udf
from .params import (IntArrayParam, IntParam, ParamValidators, StringArrayParam, StringParam)
from .runner import ModelRunner
from .serialization import SavedModel, read_model_dir, write_model_dir
from .spec import FeatureSpec, ModelSpec

__all__ = ["PyTorchModel", "register_model_function"]

_PREDICTION_TYPES = [t.type_name for t in DataType if t.is_numeric]


class PyTorchModel(Model):
    """Scores tables with a trained ``torch.nn.Module`` (or a loaded TorchScript/ONNX model).

    :param model: the trained module (an ``nn.Module`` or a TorchScript module).
    :param feature_cols: the input columns, in the order ``forward`` takes them.
    :param prediction_col: the name of the added column.
    :param feature_widths: array lengths of the feature columns (1 for scalars); inferred from
        the table in batch mode, required for array features of a streaming table.
    :param prediction_type: override the prediction column type (e.g. ``"FLOAT_64"``);
        by default it follows the model's output dtype and width.
    :param handle_invalid: ``"error"`` (default) fails on a NULL/NaN feature, naming the column;
        ``"skip"`` drops rows with a NULL feature before scoring.
    :param num_threads: threads per Python worker; 0 means cores / parallelism.
    """

    FEATURE_COLS = StringArrayParam("feature_cols", "Feature columns, in forward() order.", None)
    PREDICTION_COL = StringParam("prediction_col", "Name of the prediction column.",
                                 "prediction", ParamValidators.not_null())
    FEATURE_WIDTHS = IntArrayParam(
        "feature_widths", "Array length of each feature column (1 for scalars).", None)
    PREDICTION_TYPE = StringParam(
        "prediction_type", "Type of the prediction column, e.g. FLOAT_32 or FLOAT_32_ARRAY.",
        None, ParamValidators.optional(ParamValidators.in_array(_PREDICTION_TYPES)))
    HANDLE_INVALID = StringParam(
        "handle_invalid", "What to do with a NULL/NaN feature: 'error' or 'skip'.", "error",
        ParamValidators.in_array(["error", "skip"]))
    NUM_THREADS = IntParam("num_threads", "Threads per worker (0: cores / parallelism).", 0,
                           ParamValidators.gt_eq(0))

    def __init__(self, model: Optional[torch.nn.Module] = None,
                 feature_cols: Union[None, str, Sequence[str]] = None,
                 prediction_col: str = "prediction", *,
                 feature_widths: Optional[Sequence[int]] = None,
                 prediction_type: Optional[str] = None, handle_invalid: str = "error",
                 num_threads: int = 0):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or TorchScript module), got "
                            f"{type(model).__name__}")
        if prediction_type is not None:
            prediction_type = DataType.from_name(prediction_type).type_name
        self._init_params(feature_cols=feature_cols, prediction_col=prediction_col,
                          feature_widths=feature_widths, prediction_type=prediction_type,
                          handle_invalid=handle_invalid, num_threads=num_threads)
        self._module = model
        self._saved: Optional[SavedModel] = None
        self._spec: Optional[ModelSpec] = None
        self._torchscript_cache: Dict[Tuple, bytes] = {}
        self._feature_types: Optional[List[DataType]] = None  # column types known w/o a table
        self._pending = None  # a training job that will produce this model's weights
        self._t_env = None
        self._history: List[Dict[str, Any]] = []

    # ----------------------------------------------------------------- accessors
    @property
    def history(self) -> List[Dict[str, Any]]:
        """Per-epoch training metrics of a model produced by PyTorchEstimator.fit."""
        if self._pending is not None and self._pending.ready():
            self._resolve_pending()
        return self._history

    def _resolve_pending(self) -> None:
        if self._pending is not None:
            self._pending.resolve(self)

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The torch module (a TorchScript module when loaded from TorchScript; None for ONNX)."""
        self._resolve_pending()
        if self._module is None and self._saved and self._saved.model_format == "torchscript":
            self._module = torch.jit.load(io.BytesIO(self._saved.model_bytes), map_location="cpu")
        return self._module

    def get_feature_cols(self) -> Optional[Tuple[str, ...]]:
        return self.get(self.FEATURE_COLS)

    def set_feature_cols(self, *cols: str) -> "PyTorchModel":
        return self.set(self.FEATURE_COLS, list(cols))

    def get_prediction_col(self) -> str:
        return self.get(self.PREDICTION_COL)

    def set_prediction_col(self, name: str) -> "PyTorchModel":
        return self.set(self.PREDICTION_COL, name)

    def get_handle_invalid(self) -> str:
        return self.get(self.HANDLE_INVALID)

    def set_handle_invalid(self, value: str) -> "PyTorchModel":
        return self.set(self.HANDLE_INVALID, value)

    # ----------------------------------------------------------------- transform
    def transform(self, *inputs: Table) -> List[Table]:
        """Return ``[input + prediction column]``, computed lazily by a pandas UDF."""
        if len(inputs) != 1:
            raise ValueError(f"PyTorchModel.transform takes exactly one table, got {len(inputs)}")
        table = inputs[0]
        self._resolve_pending()
        spec = self._resolve_spec(table)
        runner = self._runner(spec)
        parallelism = int(table._t_env.get_config().get("parallelism.default", "1") or 1)
        return [add_prediction_column(table, runner, spec, self.get(self.HANDLE_INVALID),
                                      max(parallelism, 1))]

    def as_function(self, handle_invalid: Optional[str] = None):
        """The model as a Flink scalar function for SQL and the Table API, e.g.
        ``t_env.create_temporary_function("add_five", model.as_function())`` then
        ``SELECT add_five(x) FROM t``; its arguments are the features, in ``feature_cols``
        order (scalars, or arrays of the saved length). A vectorized pandas UDF, like
        ``transform``. ``handle_invalid='error'`` (default) fails on NULL/NaN features;
        unlike ``transform``, a function cannot drop rows, so 'skip' is not available."""
        if (handle_invalid or "error") != "error":
            raise ValueError("as_function supports handle_invalid='error' only: a scalar "
                             "function cannot drop rows; filter NULLs in SQL instead")
        self._resolve_pending()
        spec = self._spec or self._resolve_spec(None)
        parallelism = None
        if self._t_env is not None:
            parallelism = int(self._t_env.get_config().get("parallelism.default", "1") or 1)
        return predict_udf(self._runner(spec), spec, True, parallelism)

    def _runner(self, spec: ModelSpec) -> ModelRunner:
        threads = self.get(self.NUM_THREADS)
        if self._saved is not None:
            names = [f.name for f in self._saved.spec.features]
            return ModelRunner(self._saved.model_format, self._saved.model_bytes, names, threads)
        return ModelRunner("torchscript", self._torchscript_bytes(spec), spec.feature_cols,
                           threads)

    def _torchscript_bytes(self, spec: ModelSpec) -> bytes:
        key = (id(self._module), tuple((f.width, f.input_dtype) for f in spec.features))
        if key not in self._torchscript_cache:
            self._torchscript_cache.clear()
            self._torchscript_cache[key] = to_torchscript(self._module, spec.sample_inputs())
        return self._torchscript_cache[key]

    # ----------------------------------------------------------------- save / load
    def save(self, path: str, format: str = "torchscript", overwrite: bool = False) -> None:
        """Write the model to directory ``path`` as TorchScript (default) or ONNX."""
        if format not in FORMATS:
            raise ValueError(f"Unknown format {format!r}; use one of {', '.join(FORMATS)}")
        if self._pending is not None and not self._pending.ready():
            # fitted lazily into a StatementSet: the worker writes it when the job runs
            self._pending.request_save(self, path, format, overwrite)
            return
        self._resolve_pending()
        spec = self._spec or self._resolve_spec(None)
        names = spec.feature_cols
        if self._saved is not None and self._saved.model_format == format:
            model_bytes = self._saved.model_bytes
            names = [f.name for f in self._saved.spec.features]
        elif self._saved is not None and self._saved.model_format == "onnx":
            raise ModelExportError(f"This model was loaded from ONNX and cannot be saved as "
                                   f"{format!r}; save it as 'onnx'")
        else:
            module, sample = self.model, spec.sample_inputs()
            if format == "onnx":
                model_bytes = to_onnx(module, sample, names)
                check_onnx(model_bytes, module, sample, names)
            else:
                model_bytes = (self._saved.model_bytes if self._saved is not None
                               else self._torchscript_bytes(spec))
        extra = {"handle_invalid": self.get(self.HANDLE_INVALID),
                 "num_threads": self.get(self.NUM_THREADS),
                 "input_names": list(names)}
        write_model_dir(path, format, model_bytes, spec, extra, overwrite=overwrite)
        write_flinkml_metadata(self, path)

    @classmethod
    def load(cls, t_env, path: str) -> "PyTorchModel":
        """Restore a model saved by :meth:`save` (TorchScript via torch.jit, ONNX via
        onnxruntime). Reads JSON and model bytes only; never unpickles."""
        saved = read_model_dir(path)
        input_names = saved.metadata.get("input_names") or saved.spec.feature_cols
        saved.spec = saved.spec.with_feature_names(input_names)
        model = cls(feature_cols=saved.spec.feature_cols,
                    prediction_col=saved.spec.prediction_col,
                    handle_invalid=saved.metadata.get("handle_invalid", "error"),
                    num_threads=int(saved.metadata.get("num_threads", 0)))
        model._saved = saved
        model._spec = saved.spec
        model._t_env = t_env
        return model

    # ----------------------------------------------------------------- model data
    def get_model_data(self) -> List[Table]:
        """The model as a one-row table ``(format STRING, model BYTES, spec STRING)``:
        TorchScript bytes (or the loaded ONNX bytes) and the JSON feature/prediction spec."""
        if self._t_env is None:
            raise NotFittedError("get_model_data needs the TableEnvironment this model came "
                                 "from (fit it, or load it with PyTorchModel.load(t_env, ...))")
        self._resolve_pending()
        spec = self._spec or self._resolve_spec(None)
        if self._saved is not None:
            fmt, payload = self._saved.model_format, self._saved.model_bytes
            spec_json = dict(spec.to_json(), input_names=[f.name for f in
                                                          self._saved.spec.features])
        else:
            fmt, payload = "torchscript", self._torchscript_bytes(spec)
            spec_json = dict(spec.to_json(), input_names=spec.feature_cols)
        from pyflink.table import DataTypes
        schema = DataTypes.ROW([DataTypes.FIELD("format", DataTypes.STRING()),
                                DataTypes.FIELD("model", DataTypes.BYTES()),
                                DataTypes.FIELD("spec", DataTypes.STRING())])
        return [self._t_env.from_elements([(fmt, bytearray(payload), json.dumps(spec_json))],
                                          schema)]

    def set_model_data(self, *inputs: Table) -> "PyTorchModel":
        """Use the model held by a table from :meth:`get_model_data` (reads its one row)."""
        if len(inputs) != 1:
            raise ValueError(f"set_model_data takes one table, got {len(inputs)}")
        with inputs[0].execute().collect() as rows:
            rows = list(rows)
        if len(rows) != 1:
            raise ModelFormatError(f"A model data table holds exactly one row, got {len(rows)}")
        fmt, payload, spec_text = rows[0][0], bytes(rows[0][1]), rows[0][2]
        if fmt not in FORMATS:
            raise ModelFormatError(f"Unknown model format {fmt!r} in the model data table")
        spec_json = json.loads(spec_text)
        spec = ModelSpec.from_json(spec_json)
        names = spec_json.get("input_names") or spec.feature_cols
        saved_spec = spec.with_feature_names(names)
        self._saved = SavedModel(fmt, payload, saved_spec, {"input_names": names})
        self._module, self._pending, self._spec = None, None, saved_spec
        self._t_env = inputs[0]._t_env
        self.set(self.FEATURE_COLS, list(names))
        self.set(self.PREDICTION_COL, spec.prediction_col)
        return self

    # ----------------------------------------------------------------- spec resolution
    def _resolve_spec(self, table: Optional[Table]) -> ModelSpec:
        """Work out feature types/widths/dtypes and the prediction type, checking the table."""
        cols = self.get(self.FEATURE_COLS)
        if not cols:
            raise SchemaError("feature_cols is not set: pass feature_cols=[...] naming the "
                              "input columns in the order forward() takes them")
        prediction_col = self.get(self.PREDICTION_COL)
        column_types = _check_columns(table, cols, prediction_col) if table is not None else None
        if self._saved is not None:
            spec = self._spec_from_saved(cols, column_types, prediction_col)
        else:
            if self._module is None:
                raise NotFittedError("This PyTorchModel has no model: pass model=... , fit an "
                                     "estimator, or use PyTorchModel.load(t_env, path)")
            spec = self._spec_from_module(table, cols, column_types, prediction_col)
        self._spec = spec
        return spec

    def _spec_from_saved(self, cols, column_types, prediction_col) -> ModelSpec:
        saved = self._saved.spec
        if len(cols) != len(saved.features):
            raise SchemaError(f"The saved model takes {len(saved.features)} features "
                              f"({', '.join(saved.feature_cols)}); feature_cols names {len(cols)}")
        features = []
        for i, (name, saved_feature) in enumerate(zip(cols, saved.features)):
            data_type = column_types[i] if column_types else saved_feature.data_type
            if data_type.is_array != saved_feature.data_type.is_array:
                raise SchemaError(
                    f"Feature column {name!r} is {data_type.type_name} but the model was saved "
                    f"for {saved_feature.data_type.type_name}")
            features.append(FeatureSpec(name, data_type, saved_feature.width,
                                        saved_feature.input_dtype))
        return ModelSpec(tuple(features), prediction_col,
                         self._prediction_type(saved.prediction_type, saved.output_width),
                         saved.output_width)

    def _spec_from_module(self, table, cols, column_types, prediction_col) -> ModelSpec:
        widths = self.get(self.FEATURE_WIDTHS)
        if widths is not None and len(widths) != len(cols):
            raise SchemaError(f"feature_widths has {len(widths)} entries but feature_cols has "
                              f"{len(cols)}")
        if column_types is None and self._feature_types is not None:
            column_types = list(self._feature_types)
        if column_types is None:  # no table: scalars unless a width says array
            column_types = [DataType.FLOAT_32_ARRAY if widths and widths[i] > 1
                            else DataType.FLOAT_32 for i in range(len(cols))]
        if widths is None:
            widths = _infer_widths(table, cols, column_types)
        float_dtype = _module_float_dtype(self._module)
        int_dtypes = ["int64", float_dtype]
        last_error: Optional[Exception] = None
        for int_dtype in int_dtypes:  # integer columns: indices (int64) first, else as floats
            features = tuple(
                FeatureSpec(c, t, int(w), float_dtype if t.is_floating else int_dtype)
                for c, t, w in zip(cols, column_types, widths))
            spec = ModelSpec(features, prediction_col, DataType.FLOAT_32)
            try:
                with torch.no_grad():
                    output = self._module.eval()(*spec.sample_inputs(batch=2))
            except Exception as error:  # the user's forward failed on our sample
                last_error = error
                if not any(t.is_numeric and not t.is_floating for t in column_types):
                    break
                continue
            return self._spec_from_output(features, prediction_col, output)
        shapes = ", ".join(f"{f.name}: [batch, {f.width}] {f.input_dtype}" for f in features)
        raise SchemaError(
            f"The model failed on a sample batch shaped like its features ({shapes}): "
            f"{last_error}. Check that feature_cols are in forward() order and set "
            f"feature_widths for array columns") from last_error

    def _spec_from_output(self, features, prediction_col, output) -> ModelSpec:
        if not isinstance(output, torch.Tensor):
            raise SchemaError(f"The model's forward returned {type(output).__name__}; it must "
                              f"return a single tensor")
        if output.dim() == 0 or output.shape[0] != 2:
            raise SchemaError(f"The model returned shape {tuple(output.shape)} for a batch of 2; "
                              f"the first output dimension must be the batch")
        width = int(np.prod(output.shape[1:], dtype=np.int64))
        numpy_dtype = output.detach().numpy().dtype
        try:
            natural = DataType.from_numpy(numpy_dtype, is_array=width > 1)
        except UnsupportedTypeError as error:
            raise SchemaError(str(error)) from None
        return ModelSpec(features, prediction_col, self._prediction_type(natural, width), width)

    def _prediction_type(self, natural: DataType, width: int) -> DataType:
        override = self.get(self.PREDICTION_TYPE)
        if override is None:
            return natural
        chosen = DataType.from_name(override)
        if width > 1 and not chosen.is_array:
            raise SchemaError(f"prediction_type {override} is a scalar type but the model "
                              f"returns {width} values per row; use FLOAT_32_ARRAY")
        return chosen


def _check_columns(table: Table, cols: Sequence[str], prediction_col: str) -> List[DataType]:
    schema = table.get_resolved_schema()
    names = schema.get_column_names()
    types = dict(zip(names, schema.get_column_data_types()))
    missing = [c for c in cols if c not in types]
    if missing:
        raise SchemaError(f"Feature column(s) {', '.join(map(repr, missing))} not found in the "
                          f"table; its columns are: {', '.join(names)}")
    if prediction_col in types:
        raise SchemaError(f"The table already has a column {prediction_col!r}; set "
                          f"prediction_col to a new name")
    column_types = []
    for c in cols:
        data_type = DataType.from_flink(types[c], c)
        if not data_type.is_numeric:
            raise UnsupportedTypeError(f"Feature column {c!r} is {data_type.type_name}; "
                                       f"features must be "
                                       f"FLOAT, DOUBLE, INT, BIGINT, ARRAY<FLOAT> or ARRAY<DOUBLE>")
        column_types.append(data_type)
    return column_types


def _infer_widths(table: Optional[Table], cols, column_types) -> List[int]:
    array_cols = [c for c, t in zip(cols, column_types) if t.is_array]
    if not array_cols:
        return [1] * len(cols)
    if table is None:
        raise SchemaError(f"Array feature column(s) {', '.join(array_cols)}: set "
                          f"feature_widths (the array lengths) to save without a table")
    mode = table._t_env.get_config().get("execution.runtime-mode", "streaming").lower()
    if mode != "batch":
        raise SchemaError(f"Array feature column(s) {', '.join(array_cols)} of a streaming "
                          f"table: set feature_widths=[...] (their lengths; 1 for scalars)")
    with table.select(*[col(c) for c in array_cols]).limit(1).execute().collect() as rows:
        first = next(iter(rows), None)
    if first is None:
        raise SchemaError(f"Cannot infer the length of array column(s) "
                          f"{', '.join(array_cols)} from an empty table; set feature_widths")
    lengths = dict(zip(array_cols, (len(v) if v is not None else None for v in first)))
    if None in lengths.values():
        raise SchemaError("Cannot infer array lengths from a row with a NULL array; set "
                          "feature_widths")
    return [lengths.get(c, 1) for c in cols]


def _module_float_dtype(module: torch.nn.Module) -> str:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).replace("torch.", "")
    return "float32"


def register_model_function(t_env, name: str, path: str) -> PyTorchModel:
    """Load the model saved at ``path`` and register it as the temporary SQL function
    ``name`` (``SELECT name(feature, ...) FROM t``); returns the loaded model."""
    model = PyTorchModel.load(t_env, path)
    t_env.create_temporary_function(name, model.as_function())
    return model
