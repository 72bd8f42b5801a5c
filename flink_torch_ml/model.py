"""PyTorchModel: a FlinkML-style Model that scores Flink tables with a PyTorch model.

``transform`` adds a prediction column computed by a vectorized pandas UDF; ``save`` writes
TorchScript or ONNX plus ``metadata.json``; ``load`` restores a model that scores identically.
Feature convention (as in DL-on-Flink): ``forward`` receives one ``[batch, width]`` tensor per
feature column, in ``feature_cols`` order (width 1 for a scalar column, n for an array column).
"""

import io
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from pyflink.table import Table
from pyflink.table.expressions import col

from ._compat import table_columns
from .api import Model
from .data_types import DataType
from .errors import ModelExportError, ModelFormatError, NotFittedError, SchemaError
from .params import (HasFeatureCols, HasHandleInvalid, HasNumThreads, HasPredictionCol, IntParam,
                     IntArrayParam, ParamValidators, StringParam)
from .client.planner import planned
from .core.export import FORMATS, export_model, to_torchscript
from .core.runner import ModelRunner
from .core.serialization import SavedModel, read_model_dir, write_model_dir
from .worker.follow import MODEL_DATA_FIELDS
from .core.spec import FeatureSpec, ModelSpec, prediction_type, spec_for_module
from .client.scoring_job import add_prediction_column, follow_model_stream, predict_udf
from .client.schema import checked_columns

__all__ = ["PyTorchModel", "register_model_function"]

_PREDICTION_TYPES = [t.type_name for t in DataType if t.is_numeric]


class PyTorchModel(Model, HasFeatureCols, HasPredictionCol, HasHandleInvalid, HasNumThreads):
    """Scores tables with a trained ``torch.nn.Module`` (or a loaded TorchScript/ONNX model).

    :param model: the trained module (an ``nn.Module`` or a TorchScript module).
    :param feature_cols: the input columns, in the order ``forward`` takes them.
    :param prediction_col: the name of the added column.
    :param feature_widths: array lengths of the feature columns (1 for scalars); inferred from
        the table in batch mode, required for array features of a streaming table.
    :param prediction_type: override the prediction column type (e.g. ``"FLOAT_64"``);
        by default it follows the model's output dtype and width.
    :param handle_invalid: ``"error"`` (default) fails on a NULL/NaN feature, naming the column;
        ``"skip"`` drops rows with a NULL or NaN feature, or an array feature of the wrong
        length or holding NULL/NaN, and counts them (metric ``rowsSkippedInvalid``).
    :param num_threads: threads per Python worker; 0 means cores / parallelism.
    :param model_version_col: the version column of an unbounded model-data table (see
        :meth:`set_model_data`) and of ``transform``'s output when following one.
    :param max_allowed_model_delay_ms: when following a model stream, a row with event time
        t is scored only with a version whose time is at least t - this (FlinkML's
        ``maxAllowedModelDelayMs``); rows wait until such a version arrives. None (default):
        the newest version received.
    """

    FEATURE_WIDTHS = IntArrayParam(
        "feature_widths", "Array length of each feature column (1 for scalars).", None)
    PREDICTION_TYPE = StringParam(
        "prediction_type", "Type of the prediction column, e.g. FLOAT_32 or FLOAT_32_ARRAY.",
        None, ParamValidators.optional(ParamValidators.in_array(_PREDICTION_TYPES)))
    MODEL_VERSION_COL = StringParam(
        "model_version_col", "Version column of an unbounded model-data table and of the "
        "scored output.", "modelVersion")
    MAX_ALLOWED_MODEL_DELAY_MS = IntParam(
        "max_allowed_model_delay_ms", "Largest gap between a row's event time and the time of "
        "the model version that scores it; None: the newest version.", None,
        ParamValidators.optional(ParamValidators.gt_eq(0)))

    def __init__(self, model: Optional[torch.nn.Module] = None,
                 feature_cols: Union[None, str, Sequence[str]] = None,
                 prediction_col: str = "prediction", *,
                 feature_widths: Optional[Sequence[int]] = None,
                 prediction_type: Optional[str] = None, handle_invalid: str = "error",
                 num_threads: int = 0, model_version_col: str = "modelVersion",
                 max_allowed_model_delay_ms: Optional[int] = None, **misspelt: Any):
        self._reject_unknown(misspelt)
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module (or TorchScript module), got "
                            f"{type(model).__name__}")
        if prediction_type is not None:
            prediction_type = DataType.from_name(prediction_type).type_name
        self._init_params(feature_cols=feature_cols, prediction_col=prediction_col,
                          feature_widths=feature_widths, prediction_type=prediction_type,
                          handle_invalid=handle_invalid, num_threads=num_threads,
                          model_version_col=model_version_col,
                          max_allowed_model_delay_ms=max_allowed_model_delay_ms)
        self._module = model
        # Where the model comes from: a module (``_module``), saved bytes (``_saved``: loaded,
        # or read from a model-data table), a fit that will produce it (``_fit``), or an
        # unbounded model-data table to follow (``_model_stream``, with ``_keep_alive``:
        # what its job needs in this process, the online fit's store).
        self._model_stream: Optional[Table] = None
        self._keep_alive: Any = None
        self._saved: Optional[SavedModel] = None
        self._spec: Optional[ModelSpec] = None
        self._torchscript_cache: Dict[Tuple, bytes] = {}
        self._feature_types: Optional[List[DataType]] = None  # column types known w/o a table
        self._fit = None  # a client.fit.BatchFit whose job will produce this model's weights
        self._t_env = None
        self._history: List[Dict[str, Any]] = []
        self._worker_summaries: List[Dict[str, Any]] = []

    @classmethod
    def _from_fit(cls, fit, feature_cols: Sequence[str], feature_types: Sequence[DataType],
                  prediction_col: str, t_env) -> "PyTorchModel":
        """The model ``PyTorchEstimator.fit`` returns: its weights, widths and history come
        from ``fit`` (a ``client.fit.BatchFit``: ``result()`` gives them once the job ran;
        ``request_save`` asks the job to write the model when it is fitted lazily in a
        StatementSet)."""
        model = cls(None, list(feature_cols), prediction_col)
        model._feature_types = list(feature_types)
        model._t_env = t_env
        model._fit = fit
        return model

    @classmethod
    def _following(cls, versions: Table, module: torch.nn.Module, spec: ModelSpec,
                   keep_alive: Any = None, **params: Any) -> "PyTorchModel":
        """The model ``OnlinePyTorchEstimator.fit`` returns: it scores with the newest
        version of the model-data table ``versions`` (whose versions are shaped like
        ``module`` and ``spec``); ``keep_alive`` is what its job needs in this process."""
        model = cls(module, spec.feature_cols, spec.prediction_col, **params)
        model._spec = spec
        model._t_env = versions._t_env
        model._model_stream = versions
        model._keep_alive = keep_alive
        return model

    # ----------------------------------------------------------------- accessors
    @property
    def history(self) -> List[Dict[str, Any]]:
        """Per-epoch training metrics of a model produced by PyTorchEstimator.fit."""
        if self._fit is not None and self._fit.ready():
            self._resolve_training()
        return self._history

    @property
    def worker_summaries(self) -> List[Dict[str, Any]]:
        """Per rank, what the workers of the fit reported: ``rank``, ``rows`` trained on,
        ``received_rows`` (before balancing), ``pid``, timings (``received_at``,
        ``started_at``, ``finished_at``, ``seconds``). Empty for lazy fits and loaded
        models."""
        self.history  # noqa: B018 - resolves a finished fit
        return self._worker_summaries

    def _resolve_training(self) -> None:
        """Take the trained weights from the fit that produces this model (once)."""
        if self._fit is None:
            return
        result = self._fit.result()
        if result is None:
            raise NotFittedError("The model is not trained yet: its training job runs when "
                                 "the StatementSet passed to PyTorchEstimator executes")
        self._module = result.module
        self.set(self.FEATURE_WIDTHS, list(result.feature_widths))
        self._history = list(result.history)
        self._worker_summaries = list(result.summaries)
        self._fit = None

    @property
    def model(self) -> Optional[torch.nn.Module]:
        """The torch module (a TorchScript module when loaded from TorchScript; None for ONNX)."""
        self._resolve_training()
        if self._module is None and self._saved and self._saved.model_format == "torchscript":
            self._module = torch.jit.load(io.BytesIO(self._saved.model_bytes), map_location="cpu")
        return self._module

    def get_feature_widths(self) -> Optional[Tuple[int, ...]]:
        return self.get(self.FEATURE_WIDTHS)

    def set_feature_widths(self, *widths: int) -> "PyTorchModel":
        if len(widths) == 1 and isinstance(widths[0], (list, tuple)):
            widths = tuple(widths[0])
        return self.set(self.FEATURE_WIDTHS, list(widths))

    def get_prediction_type(self) -> Optional[str]:
        return self.get(self.PREDICTION_TYPE)

    def set_prediction_type(self, value: Optional[str]) -> "PyTorchModel":
        return self.set(self.PREDICTION_TYPE, None if value is None
                        else DataType.from_name(value).type_name)

    # ----------------------------------------------------------------- transform
    def transform(self, *inputs: Table) -> List[Table]:
        """Return ``[input + prediction column]``, computed lazily by a pandas UDF."""
        if len(inputs) != 1:
            raise ValueError(f"PyTorchModel.transform takes exactly one table, got {len(inputs)}")
        table = inputs[0]
        if self._model_stream is not None:
            return [self._follow(table)]
        self._resolve_training()
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
        self._resolve_training()
        spec = self._spec or self._resolve_spec(None)
        parallelism = None
        if self._t_env is not None:
            parallelism = int(self._t_env.get_config().get("parallelism.default", "1") or 1)
        return predict_udf(self._runner(spec), spec, True, parallelism)

    def _scoring_parts(self) -> Tuple[ModelSpec, ModelRunner]:
        """The spec and runner that score this model without a table (DataStream scoring)."""
        self._resolve_training()
        spec = self._spec or self._resolve_spec(None)
        return spec, self._runner(spec)

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
            module = self._module
            assert module is not None  # no saved bytes: a module (else _resolve_spec raised)
            self._torchscript_cache[key] = to_torchscript(module, spec.sample_inputs())
        return self._torchscript_cache[key]

    # ----------------------------------------------------------------- save / load
    def save(self, path: str, format: str = "torchscript", overwrite: bool = False) -> None:
        """Write the model to directory ``path`` as TorchScript (default) or ONNX."""
        if format not in FORMATS:
            raise ValueError(f"Unknown format {format!r}; use one of {', '.join(FORMATS)}")
        extra = {"handle_invalid": self.get_handle_invalid(),
                 "num_threads": self.get_num_threads()}
        if self._fit is not None and not self._fit.ready():
            # fitted lazily into a StatementSet: the worker writes it when the job runs
            self._fit.request_save(path, format, overwrite, self.get_prediction_col(),
                                        extra)
            return
        self._resolve_training()
        spec = self._spec or self._resolve_spec(None)
        names = spec.feature_cols
        if self._saved is not None and self._saved.model_format == format:
            model_bytes = self._saved.model_bytes
            names = [f.name for f in self._saved.spec.features]
        elif self._saved is not None and self._saved.model_format == "onnx":
            raise ModelExportError(f"This model was loaded from ONNX and cannot be saved as "
                                   f"{format!r}; save it as 'onnx'")
        elif format == "onnx":
            module = self.model
            assert module is not None  # a module, or TorchScript bytes that load as one
            model_bytes = export_model(module, spec, format)
        else:
            model_bytes = (self._saved.model_bytes if self._saved is not None
                           else self._torchscript_bytes(spec))
        write_model_dir(path, format, model_bytes, spec, dict(extra, input_names=list(names)),
                        overwrite=overwrite)

    @classmethod
    def load(cls, t_env, path: str, trusted: Optional[bool] = None) -> "PyTorchModel":
        """Restore a model saved by :meth:`save` (TorchScript via torch.jit, ONNX via
        onnxruntime). Reads JSON and model bytes only; never unpickles.

        A TorchScript model is code (it runs when loaded and scored): it is loaded from a
        directory this user's model key signed (what ``save`` writes here), or with
        ``trusted=True``; ``trusted=False`` is safe mode and loads ONNX models only. An ONNX
        model that names external data files is always refused (onnxruntime would read
        them). Otherwise :class:`UntrustedArtifactError` says why."""
        saved = read_model_dir(path, trusted)
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
        if self._model_stream is not None:
            return [self._model_stream]
        self._resolve_training()
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
        """Use the model held by a table from :meth:`get_model_data` (reads its one row).

        A table with the ``model_version_col`` column (e.g. ``OnlinePyTorchEstimator``'s
        model data, or those rows read back from a filesystem or Kafka table) is a model
        *stream*: it is not read here; ``transform`` then scores each row with the newest
        version received and appends the version column."""
        if len(inputs) != 1:
            raise ValueError(f"set_model_data takes one table, got {len(inputs)}")
        names, _ = table_columns(inputs[0])
        version_col = self.get(self.MODEL_VERSION_COL)
        if version_col in names:
            missing = [c for c in MODEL_DATA_FIELDS if c not in names]
            if missing:
                raise SchemaError(f"The model-data table has the version column "
                                  f"{version_col!r} but lacks {', '.join(missing)}; its "
                                  f"columns are {', '.join(names)}")
            self._model_stream = inputs[0]
            self._t_env = inputs[0]._t_env
            return self
        with planned(inputs[0]._t_env, inputs[0].execute).collect() as rows:
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
        self._module, self._fit, self._spec = None, None, saved_spec
        self._t_env = inputs[0]._t_env
        self.set(self.FEATURE_COLS, list(names))
        self.set(self.PREDICTION_COL, spec.prediction_col)
        return self

    # ----------------------------------------------------------------- model streams
    def _follow(self, table: Table) -> Table:
        version_col = self.get(self.MODEL_VERSION_COL)
        if version_col in table_columns(table)[0]:
            raise SchemaError(f"The table already has a column {version_col!r}; set "
                              f"model_version_col to a new name")
        spec = self._stream_spec(table)
        return follow_model_stream(table, self._model_stream, spec, version_col,
                                   self.get(self.MAX_ALLOWED_MODEL_DELAY_MS),
                                   self.get(self.HANDLE_INVALID) == "skip",
                                   self.get(self.NUM_THREADS))

    def _stream_spec(self, table: Table) -> ModelSpec:
        """The spec for following a model stream: this model's own (from the online fit or
        a module), else the one the stream's first version records."""
        cols = self.get(self.FEATURE_COLS)
        if not cols:
            raise SchemaError("feature_cols is not set: pass feature_cols=[...] naming the "
                              "input columns in the order forward() takes them")
        column_types = _check_columns(table, cols, self.get(self.PREDICTION_COL))
        if self._spec is None and self._module is not None:
            self._resolve_spec(table)
        spec = self._spec
        if spec is None:
            spec = _first_version_spec(self._model_stream, self.get(self.MODEL_VERSION_COL))
        if len(spec.features) != len(cols):
            raise SchemaError(f"The model takes {len(spec.features)} features; feature_cols "
                              f"names {len(cols)}")
        features = tuple(FeatureSpec(name, data_type, f.width, f.input_dtype)
                         for name, data_type, f in zip(cols, column_types, spec.features))
        return ModelSpec(features, self.get(self.PREDICTION_COL),
                         prediction_type(spec.prediction_type, spec.output_width,
                                         self.get(self.PREDICTION_TYPE)), spec.output_width)

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
        assert self._saved is not None  # called for a loaded model only
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
                         prediction_type(saved.prediction_type, saved.output_width,
                                         self.get(self.PREDICTION_TYPE)),
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
        assert self._module is not None  # _resolve_spec checked it
        return spec_for_module(self._module, cols, column_types, widths, prediction_col,
                               self.get(self.PREDICTION_TYPE))


def _check_columns(table: Table, cols: Sequence[str], prediction_col: str) -> List[DataType]:
    """The feature columns' types, by the one column rule (core.rows.check_columns)."""
    return checked_columns(table, cols, outputs=[(prediction_col, "prediction_col")])[0]


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
    first_row = table.select(*[col(c) for c in array_cols]).limit(1)
    with planned(table._t_env, first_row.execute).collect() as rows:
        first = next(iter(rows), None)
    if first is None:
        raise SchemaError(f"Cannot infer the length of array column(s) "
                          f"{', '.join(array_cols)} from an empty table; set feature_widths")
    lengths = dict(zip(array_cols, (len(v) if v is not None else None for v in first)))
    if None in lengths.values():
        raise SchemaError("Cannot infer array lengths from a row with a NULL array; set "
                          "feature_widths")
    return [lengths.get(c, 1) for c in cols]


def _first_version_spec(model_data: Table, version_col: str,
                        timeout: float = 60.0) -> ModelSpec:
    """The spec recorded by the first row of a model-data table, waiting at most ``timeout``
    seconds for one (the table may be unbounded and still empty)."""
    import threading

    t_env = model_data._t_env
    first = model_data.select(col("spec")).limit(1)
    box: Dict[str, Any] = {}

    def read():
        try:
            result = planned(t_env, first.execute)
            box["result"] = result
            with result.collect() as rows:
                for row in rows:
                    box["spec"] = row[0]
                    break
        except Exception as error:  # reported below
            box["error"] = error

    reader = threading.Thread(target=read, daemon=True, name="ftm-first-version")
    reader.start()
    reader.join(timeout)
    if "spec" not in box:
        if "result" in box:
            try:
                box["result"].get_job_client().cancel()
            except Exception:
                pass
        why = f": {box['error']}" if "error" in box else f" within {timeout:.0f} s"
        raise SchemaError(f"This model does not know its features' widths and output type, "
                          f"and no version arrived in the model-data table{why}; build the "
                          f"model from the estimator or a saved model (PyTorchModel.load) "
                          f"and then set_model_data")
    try:
        return ModelSpec.from_json(json.loads(box["spec"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFormatError(f"The first model version's spec is corrupt: {error}") from None


def register_model_function(t_env, name: str, path: str,
                            trusted: Optional[bool] = None) -> PyTorchModel:
    """Load the model saved at ``path`` (``trusted`` as in :meth:`PyTorchModel.load`) and
    register it as the temporary SQL function ``name`` (``SELECT name(feature, ...) FROM
    t``); returns the loaded model."""
    model = PyTorchModel.load(t_env, path, trusted)
    t_env.create_temporary_function(name, model.as_function())
    return model
