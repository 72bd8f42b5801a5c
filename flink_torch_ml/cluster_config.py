"""PyTorchClusterConfig: what the PyTorch cluster inside a Flink job looks like.

As in DL-on-Flink: a world size, a node entry function (the user's training or inference loop)
and string properties (``input_types``, ``output_types`` and the user's own), built with
``PyTorchClusterConfig.new_builder()...build()``. Validation happens at ``build()``, before any
job is submitted.
"""

import inspect
from typing import Callable, Dict, List, Optional

from . import _defaults
from .data_types import DataType, parse_type_names
from .client import options

__all__ = ["PyTorchClusterConfig"]


class PyTorchClusterConfig:
    """An immutable cluster description; create it with :meth:`new_builder`."""

    INPUT_TYPES = "input_types"
    OUTPUT_TYPES = "output_types"
    #: seconds any distributed wait may take (rendezvous, collectives, the final barrier)
    TIMEOUT = options.TIMEOUT
    #: address the workers dial to reach the client's rendezvous store
    RENDEZVOUS_HOST = options.RENDEZVOUS_HOST
    #: address the store binds to (default: loopback locally, all interfaces on a cluster)
    RENDEZVOUS_BIND = options.RENDEZVOUS_BIND
    #: new attempts after a lost worker, host or TaskManager (``train`` without a
    #: StatementSet); the entry resumes from its own checkpoints (``get_attempt``)
    MAX_FAILURES = options.MAX_FAILURES
    #: a directory for the entry's own checkpoints (``PyTorchContext.get_checkpoint_dir``)
    CHECKPOINT_DIR = options.CHECKPOINT_DIR
    DEFAULT_TIMEOUT = _defaults.TIMEOUT

    def __init__(self, node_entry: Callable, world_size: int, properties: Dict[str, str]):
        self._node_entry = node_entry
        self._world_size = world_size
        self._properties = dict(properties)

    @staticmethod
    def new_builder() -> "PyTorchClusterConfig.Builder":
        return PyTorchClusterConfig.Builder()

    def get_node_entry(self) -> Callable:
        return self._node_entry

    def get_world_size(self) -> int:
        return self._world_size

    def get_properties(self) -> Dict[str, str]:
        return dict(self._properties)

    def get_property(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self._properties.get(key, default)

    def get_timeout(self) -> float:
        return float(self._properties.get(self.TIMEOUT, self.DEFAULT_TIMEOUT))

    def get_max_failures(self) -> int:
        return int(self._properties.get(self.MAX_FAILURES, 0))

    def get_checkpoint_dir(self) -> Optional[str]:
        return self._properties.get(self.CHECKPOINT_DIR)

    def get_input_types(self) -> Optional[List[DataType]]:
        names = self._properties.get(self.INPUT_TYPES)
        return parse_type_names(names, what=self.INPUT_TYPES) if names is not None else None

    def get_output_types(self) -> Optional[List[DataType]]:
        names = self._properties.get(self.OUTPUT_TYPES)
        return parse_type_names(names, what=self.OUTPUT_TYPES) if names is not None else None

    def __repr__(self):
        entry = getattr(self._node_entry, "__qualname__", self._node_entry)
        return (f"PyTorchClusterConfig(world_size={self._world_size}, node_entry={entry}, "
                f"properties={self._properties})")

    class Builder:
        """Collects the settings; :meth:`build` validates them."""

        def __init__(self) -> None:
            self._node_entry: Optional[Callable] = None
            self._world_size: Optional[int] = None
            self._properties: Dict[str, str] = {}

        def set_node_entry(self, entry: Callable) -> "PyTorchClusterConfig.Builder":
            self._node_entry = entry
            return self

        def set_world_size(self, world_size: int) -> "PyTorchClusterConfig.Builder":
            self._world_size = world_size
            return self

        def set_property(self, key: str, value) -> "PyTorchClusterConfig.Builder":
            if not isinstance(key, str):
                raise TypeError(f"Property keys must be strings, got {key!r}")
            self._properties[key] = str(value)
            return self

        def set_timeout(self, seconds: float) -> "PyTorchClusterConfig.Builder":
            """Bound every distributed wait (default 180 s)."""
            return self.set_property(PyTorchClusterConfig.TIMEOUT, float(seconds))

        def set_max_failures(self, count: int) -> "PyTorchClusterConfig.Builder":
            """New attempts after a lost worker, host or TaskManager (default 0: fail at
            once). Each attempt reruns the entry on every rank; it resumes from its own
            checkpoints (``PyTorchContext.get_attempt()``, ``get_checkpoint_dir()``)."""
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"max_failures must be an int >= 0, got {count!r}")
            return self.set_property(PyTorchClusterConfig.MAX_FAILURES, count)

        def set_checkpoint_dir(self, path: str) -> "PyTorchClusterConfig.Builder":
            """A directory the entry may keep checkpoints in (every TaskManager must reach
            it at the same path); handed to it as ``get_checkpoint_dir()``."""
            return self.set_property(PyTorchClusterConfig.CHECKPOINT_DIR, path)

        def set_rendezvous_host(self, host: str, bind: Optional[str] = None
                                ) -> "PyTorchClusterConfig.Builder":
            """The address workers use to reach the client (and, optionally, what it binds)."""
            self.set_property(PyTorchClusterConfig.RENDEZVOUS_HOST, host)
            if bind is not None:
                self.set_property(PyTorchClusterConfig.RENDEZVOUS_BIND, bind)
            return self

        def build(self) -> "PyTorchClusterConfig":
            world_size, entry = self._world_size, self._node_entry
            if isinstance(world_size, bool) or not isinstance(world_size, int):
                raise TypeError(f"world_size must be an int, got {world_size!r}; call "
                                f"set_world_size(n)")
            if world_size < 1:
                raise ValueError(f"world_size must be at least 1, got {world_size}")
            _check_entry(entry)
            assert entry is not None  # _check_entry refuses None
            config = PyTorchClusterConfig(entry, world_size, self._properties)
            config.get_input_types()  # unknown type names fail here, before any job
            config.get_output_types()
            timeout = self._properties.get(PyTorchClusterConfig.TIMEOUT)
            if timeout is not None and not float(timeout) > 0:
                raise ValueError(f"{PyTorchClusterConfig.TIMEOUT} must be > 0, got {timeout}")
            failures = self._properties.get(PyTorchClusterConfig.MAX_FAILURES)
            if failures is not None and (not failures.lstrip("-").isdigit()
                                         or int(failures) < 0):
                raise ValueError(f"{PyTorchClusterConfig.MAX_FAILURES} must be an int >= 0, "
                                 f"got {failures!r}")
            return config


def _check_entry(entry) -> None:
    if entry is None:
        raise TypeError("No node entry: call set_node_entry(fn) with a top-level function "
                        "fn(context)")
    if not inspect.isfunction(entry):
        raise TypeError(f"The node entry must be a top-level function fn(context), got "
                        f"{type(entry).__name__} {entry!r}")
    if entry.__name__ == "<lambda>" or "<locals>" in entry.__qualname__ \
            or entry.__qualname__ != entry.__name__:
        raise TypeError(f"The node entry {entry.__qualname__!r} must be a top-level function "
                        f"(defined at module level, not a lambda, nested function or method), "
                        f"so that every Flink worker can run it")
    params = [p for p in inspect.signature(entry).parameters.values()
              if p.default is inspect.Parameter.empty
              and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) != 1:
        raise TypeError(f"The node entry {entry.__qualname__!r} must take exactly one "
                        f"argument (the context), it takes {len(params)}")
