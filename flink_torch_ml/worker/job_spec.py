"""What every Python worker of a run needs to know, shipped inside the Flink job."""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..core.types import DataType
from ..dataplane.rendezvous import RendezvousInfo

__all__ = ["JobSpec"]


@dataclass
class JobSpec:
    """The run's entry, shape and rendezvous (its secret included: the job graph is the
    library's trust boundary, as for every PyFlink UDF)."""

    entry: Callable
    world_size: int
    properties: Dict[str, str]
    input_names: List[str]
    input_types: List[str]
    output_types: Optional[List[str]]
    epochs: int
    rendezvous: RendezvousInfo
    client_pid: int
    key_to_rank: Dict[int, int]
    attempt: int = 0
    #: rows go to ranks by content and each shard is sorted by content (the estimator:
    #: the same shards whatever the arrival order); else batches round-robin, as they come
    by_content: bool = False

    @property
    def timeout(self) -> float:
        return self.rendezvous.timeout

    def input_data_types(self) -> List[DataType]:
        return [DataType.from_name(t) for t in self.input_types]

    def output_data_types(self) -> Optional[List[DataType]]:
        if self.output_types is None:
            return None
        return [DataType.from_name(t) for t in self.output_types]
