"""FlinkML-style stage base classes: ``Stage``, ``Transformer``, ``Model``, ``Estimator``.

``apache-flink-ml`` cannot be installed on current Pythons, so we define the same contract here.
When ``pyflink.ml.api`` *is* importable, our classes also derive from its classes, so FlinkML's
own ``Pipeline`` and ``isinstance`` checks accept our stages.
"""

from abc import abstractmethod
from typing import Any, Dict, List, Optional

from pyflink.table import Table

from .params import WithParams
from .core.serialization import write_flinkml_metadata as _write

try:  # pragma: no cover - depends on whether FlinkML's Python package is on the path
    from pyflink.ml.api import Estimator as _FlinkMLEstimator
    from pyflink.ml.api import Model as _FlinkMLModel
    from pyflink.ml.api import Stage as _FlinkMLStage
    from pyflink.ml.api import Transformer as _FlinkMLTransformer
except ImportError:  # the usual case: define empty stand-ins
    class _FlinkMLStage:  # type: ignore[no-redef]
        pass

    class _FlinkMLTransformer(_FlinkMLStage):  # type: ignore[no-redef]
        pass

    class _FlinkMLModel(_FlinkMLTransformer):  # type: ignore[no-redef]
        pass

    class _FlinkMLEstimator(_FlinkMLStage):  # type: ignore[no-redef]
        pass

__all__ = ["Stage", "Transformer", "Model", "Estimator", "write_flinkml_metadata"]


def write_flinkml_metadata(stage, path: str, extra: Optional[Dict[str, Any]] = None) -> None:
    """Write the ``metadata`` file FlinkML's loader reads for ``stage`` (see
    ``scoring.serialization.write_flinkml_metadata``)."""
    _write(path, type(stage).__module__, type(stage).__name__, extra)


class Stage(WithParams, _FlinkMLStage):
    """A node of a pipeline: has params, ``save(path)`` and classmethod ``load(t_env, path)``."""

    @abstractmethod
    def save(self, path: str) -> None:
        ...

    @classmethod
    @abstractmethod
    def load(cls, t_env, path: str) -> "Stage":
        ...


class Transformer(Stage, _FlinkMLTransformer):
    """A stage that maps input tables to output tables."""

    @abstractmethod
    def transform(self, *inputs: Table) -> List[Table]:
        ...


class Model(Transformer, _FlinkMLModel):
    """A transformer produced by an Estimator; may expose its model data as tables."""

    def set_model_data(self, *inputs: Table) -> "Model":
        raise NotImplementedError(f"{type(self).__name__} does not accept model data tables")

    def get_model_data(self) -> List[Table]:
        raise NotImplementedError(f"{type(self).__name__} does not expose model data tables")


class Estimator(Stage, _FlinkMLEstimator):
    """A stage that fits a Model on input tables."""

    @abstractmethod
    def fit(self, *inputs: Table) -> Model:
        ...
