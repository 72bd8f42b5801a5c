"""What a model needs to know to run on a table: its feature columns and its prediction column.

A :class:`ModelSpec` is resolved once in the client from the table schema and the model, then
travels with the UDF and into ``metadata.json``.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .types import DataType
from ..errors import SchemaError, UnsupportedTypeError

__all__ = ["FeatureSpec", "ModelSpec", "spec_for_module", "prediction_type",
           "module_float_dtype"]


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: its name, column type, width (1 for scalars) and the model's dtype."""

    name: str
    data_type: DataType
    width: int
    input_dtype: str  # numpy dtype name of the tensor the model receives, e.g. "float32"

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """A sample ``[batch, width]`` tensor for probing or exporting the model."""
        dtype = getattr(torch, self.input_dtype)
        if dtype.is_floating_point:
            return torch.randn(batch, self.width, generator=generator).to(dtype)
        return torch.zeros(batch, self.width, dtype=dtype)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "type": self.data_type.type_name, "width": self.width,
                "input_dtype": self.input_dtype}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "FeatureSpec":
        np.dtype(data["input_dtype"])  # reject a dtype name numpy does not know
        return cls(str(data["name"]), DataType.from_name(data["type"]), int(data["width"]),
                   str(data["input_dtype"]))


@dataclass(frozen=True)
class ModelSpec:
    """The features in ``forward`` order and the prediction column a model produces."""

    features: Tuple[FeatureSpec, ...]
    prediction_col: str
    prediction_type: DataType
    output_width: int = 1

    @property
    def feature_cols(self) -> List[str]:
        return [f.name for f in self.features]

    def with_feature_names(self, names: List[str]) -> "ModelSpec":
        """The same spec with its features renamed (e.g. to a saved model's input names)."""
        return ModelSpec(tuple(FeatureSpec(n, f.data_type, f.width, f.input_dtype)
                               for n, f in zip(names, self.features)),
                         self.prediction_col, self.prediction_type, self.output_width)

    def sample_inputs(self, batch: int = 4, seed: int = 0) -> List[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [f.sample(batch, generator) for f in self.features]

    def to_json(self) -> Dict[str, Any]:
        return {"features": [f.to_json() for f in self.features],
                "prediction_col": self.prediction_col,
                "prediction_type": self.prediction_type.type_name,
                "output_width": self.output_width}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "ModelSpec":
        return cls(tuple(FeatureSpec.from_json(f) for f in data["features"]),
                   str(data["prediction_col"]), DataType.from_name(data["prediction_type"]),
                   int(data["output_width"]))


def module_float_dtype(module: torch.nn.Module) -> str:
    """The numpy name of the module's floating dtype (its first floating tensor's)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).replace("torch.", "")
    return "float32"


def prediction_type(natural: DataType, width: int, override: Optional[str]) -> DataType:
    """The prediction column's type: the model's own, or a valid user override."""
    if override is None:
        return natural
    chosen = DataType.from_name(override)
    if width > 1 and not chosen.is_array:
        raise SchemaError(f"prediction_type {override} is a scalar type but the model "
                          f"returns {width} values per row; use FLOAT_32_ARRAY")
    return chosen


def spec_for_module(module: torch.nn.Module, feature_cols: Sequence[str],
                    column_types: Sequence[DataType], widths: Sequence[int],
                    prediction_col: str, prediction_type_override: Optional[str] = None
                    ) -> ModelSpec:
    """Probe ``module`` with a sample batch shaped like its features to learn its input
    dtypes and its output's type and width. Integer columns are tried as indices (int64)
    first, then as the module's floating dtype."""
    float_dtype = module_float_dtype(module)
    last_error: Optional[Exception] = None
    features: Tuple[FeatureSpec, ...] = ()
    for int_dtype in ("int64", float_dtype):
        features = tuple(
            FeatureSpec(c, t, int(w), float_dtype if t.is_floating else int_dtype)
            for c, t, w in zip(feature_cols, column_types, widths))
        spec = ModelSpec(features, prediction_col, DataType.FLOAT_32)
        try:
            with torch.no_grad():
                output = module.eval()(*spec.sample_inputs(batch=2))
        except Exception as error:  # the user's forward failed on our sample
            last_error = error
            if not any(t.is_numeric and not t.is_floating for t in column_types):
                break
            continue
        return _spec_from_output(features, prediction_col, output, prediction_type_override)
    shapes = ", ".join(f"{f.name}: [batch, {f.width}] {f.input_dtype}" for f in features)
    raise SchemaError(
        f"The model failed on a sample batch shaped like its features ({shapes}): "
        f"{last_error}. Check that feature_cols are in forward() order and set "
        f"feature_widths for array columns") from last_error


def _spec_from_output(features, prediction_col, output, override) -> ModelSpec:
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
    return ModelSpec(features, prediction_col, prediction_type(natural, width, override), width)
