"""The training loop every fit runs, to subclass when one step should change
(``PyTorchEstimator(training_loop=...)``, ``OnlinePyTorchEstimator(training_loop=...)``), and
the built-in metric names."""

from .core.engine import BUILTIN_METRICS, TrainingLoop

__all__ = ["TrainingLoop", "BUILTIN_METRICS"]
