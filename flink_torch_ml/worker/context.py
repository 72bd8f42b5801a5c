"""What the runtime hands to one worker's entry function (wrapped by the public
``PyTorchContext``). Built inside the Flink Python worker."""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from ..core.types import DataType
from ..dataplane.protocol import RunStore
from .shard import DataWriter, Shard

__all__ = ["NodeContext"]


@dataclass
class NodeContext:
    """One worker's place in the run: rank, shard, store and writer."""

    rank: int
    world_size: int
    index: int  # the Flink subtask index running this node
    properties: Dict[str, str]
    input_types: List[DataType]
    shard: Shard
    run: RunStore
    store_host: str
    epochs: int = 1
    writer: Optional[DataWriter] = None
    master: Optional[Tuple[str, int]] = field(default=None, repr=False)

    @property
    def timeout(self) -> float:
        return self.run.timeout
