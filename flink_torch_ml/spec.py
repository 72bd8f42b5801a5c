"""What a model needs to know to run on a table: its feature columns and its prediction column.

A :class:`ModelSpec` is resolved once in the client from the table schema and the model, then
travels with the UDF and into ``metadata.json``.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from .data_types import DataType

__all__ = ["FeatureSpec", "ModelSpec"]


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
