"""PyTorchContext: what a node entry function knows about its place in the PyTorch cluster.

The runtime calls ``entry(context)`` in every worker; ``PyTorchContext(context)`` (as in
DL-on-Flink) gives the rank, world size, rank 0's address and port for ``env://`` init, the
properties, the worker's shard as a torch Dataset, and a writer back to Flink.
"""

from typing import Dict, Optional, Tuple

from .cluster_config import PyTorchClusterConfig
from .worker.context import NodeContext
from .dataplane.rendezvous import master_endpoint
from .worker.shard import DataWriter, FlinkDataset

__all__ = ["PyTorchContext"]


class PyTorchContext:
    """The DL-on-Flink context API over the context the runtime passes to the entry."""

    def __init__(self, context):
        if isinstance(context, PyTorchContext):
            context = context._context
        if not isinstance(context, NodeContext):
            raise TypeError(f"PyTorchContext wraps the context passed to the node entry, got "
                            f"{type(context).__name__}")
        self._context = context

    def get_rank(self) -> int:
        return self._context.rank

    def get_world_size(self) -> int:
        return self._context.world_size

    def get_index(self) -> int:
        """The index of the Flink subtask running this node (equal to the rank)."""
        return self._context.index

    def get_property(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self._context.properties.get(key, default)

    def get_properties(self) -> Dict[str, str]:
        return dict(self._context.properties)

    def get_attempt(self) -> int:
        """Which attempt of the run this is: 0, then 1, 2... after failures
        (``set_max_failures``); an entry resumes from its checkpoints when it is > 0."""
        return self._context.run.attempt

    def get_checkpoint_dir(self) -> Optional[str]:
        """The config's checkpoint directory (``set_checkpoint_dir``), or None."""
        return self._context.properties.get(PyTorchClusterConfig.CHECKPOINT_DIR)

    def get_timeout(self) -> float:
        """Seconds any distributed wait may take in this run."""
        return self._context.timeout

    def _master(self) -> Tuple[str, int]:
        ctx = self._context
        if ctx.master is None:
            ctx.master = master_endpoint(ctx.run, ctx.rank, ctx.store_host)
        return ctx.master

    def get_master_ip(self) -> str:
        """Rank 0's address, reachable from every worker (for ``MASTER_ADDR``).
        ``init_process_group`` with ``env://`` at this address rendezvouses through the
        run's authenticated store; no other port is opened for it."""
        return self._master()[0]

    def get_master_port(self) -> int:
        """A port that was free on rank 0's host (for ``MASTER_PORT``)."""
        return self._master()[1]

    def get_dataset_from_flink(self) -> FlinkDataset:
        """This worker's shard as a torch IterableDataset (the table ``epoch`` times over)."""
        ctx = self._context
        return FlinkDataset(ctx.shard, ctx.input_types, ctx.epochs)

    def get_data_writer_to_flink(self) -> DataWriter:
        """A writer whose rows become the output table of ``pytorch_utils.inference``."""
        if self._context.writer is None:
            raise RuntimeError("No output here: get_data_writer_to_flink() is available in "
                               "pytorch_utils.inference jobs (set 'output_types')")
        return self._context.writer
