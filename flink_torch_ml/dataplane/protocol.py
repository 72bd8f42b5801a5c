"""The run's rendezvous-store protocol: every key the client and the workers exchange, and the
one bounded wait they all use.

All keys of a run live under the run's prefix (the store hands each run its own namespace)
and under the attempt (``a<attempt>/``), so a retried run never reads an earlier attempt's
values. Values are bytes: JSON for everything structured, Arrow IPC for columns (see
``columns.py``), safetensors for tensors; nothing in the store is ever unpickled.
Free of Flink and torch imports.
"""

import json
import time
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

from .._defaults import POLL_INTERVAL, TIMEOUT
from ..errors import RendezvousTimeoutError

__all__ = ["FEED", "RunKeys", "RunStore", "RecordedError", "wait_until"]

T = TypeVar("T")

#: who recorded an error when it was not a rank but the operator feeding them input
FEED = "feed"


class RunKeys:
    """The name of every key of one attempt of a run (and the few that span attempts)."""

    def __init__(self, attempt: int = 0):
        self.attempt = attempt
        self._prefix = f"a{attempt}/"

    def _key(self, name: str) -> str:
        return self._prefix + name

    # deployment and input
    @property
    def deployed(self) -> str:
        """A counter: training subtasks whose operator opened (too few slots shows here)."""
        return self._key("deployed")

    def feed_address(self, rank: int) -> str:
        """``host:port`` of rank's feed server."""
        return self._key(f"feed/{rank}")

    def fed_rows(self, rank: int) -> str:
        """A counter: rows the feeders delivered to rank."""
        return self._key(f"fed/{rank}")

    # placement
    def claim(self, rank: int) -> str:
        return self._key(f"claim/{rank}")

    def process(self, rank: int) -> str:
        """``host:pid`` of the process running rank."""
        return self._key(f"pid/{rank}")

    # shard balancing
    def shard_info(self, rank: int) -> str:
        """JSON: rank's row count and column shapes before balancing."""
        return self._key(f"shard/{rank}")

    def move(self, source: int, target: int) -> str:
        """Arrow IPC: rows moved from source to target."""
        return self._key(f"move/{source}/{target}")

    # errors and liveness
    @property
    def first_error(self) -> str:
        return self._key("first_error")

    def error(self, who: Union[int, str]) -> str:
        """JSON ``{"type": ..., "text": ...}`` of a rank's (or the feed's) error."""
        return self._key(f"error/{who}")

    @property
    def stack_request(self) -> str:
        return self._key("stack_request")

    def stack(self, rank: int) -> str:
        return self._key(f"stack/{rank}")

    # the end
    def finished(self, rank: int) -> str:
        return self._key(f"finished/{rank}")

    @property
    def done(self) -> str:
        """A counter: ranks whose entry returned."""
        return self._key("done")

    @property
    def exited(self) -> str:
        """A counter: ranks past the final barrier (they need the store no more)."""
        return self._key("exited")

    # what entries exchange
    @property
    def master(self) -> str:
        """``host:port`` rank 0 publishes for ``env://`` process group init."""
        return self._key("master")

    @property
    def process_group_prefix(self) -> str:
        """The prefix under which ``torch.distributed`` process groups rendezvous."""
        return self._key("pg/")

    @property
    def resume_point(self) -> str:
        """JSON: the checkpoint rank 0 chose to continue from (or none), and what it skipped."""
        return self._key("resume_point")

    @property
    def training_started(self) -> str:
        """JSON: when this attempt's ranks began training (after any resume)."""
        return self._key("training_started")

    @property
    def batch_progress(self) -> str:
        """JSON: rank 0's position in the current epoch (epoch, batch, batches), throttled."""
        return self._key("progress/batch")

    def progress(self, epoch: int) -> str:
        """JSON: the estimator's record of one epoch (epochs count from 1)."""
        return self._key(f"progress/{epoch}")

    @property
    def trained_state(self) -> str:
        """safetensors: the trained model's state dict (the estimator's rank 0)."""
        return self._key("trained/state")

    @property
    def trained_info(self) -> str:
        """JSON: history and feature widths of the trained model."""
        return self._key("trained/info")

    @property
    def save_requests(self) -> str:
        """A counter: ``model.save`` calls made before a lazily fitted model's job ran."""
        return self._key("save_requests")

    def save_request(self, index: int) -> str:
        return self._key(f"save_request/{index}")

    # online training (across attempts: Flink restarts the job, not the run)
    @property
    def online_ended(self) -> str:
        """A counter: online ranks whose bounded input ended (the client then closes the
        run's store)."""
        return "online/ended"


class RecordedError:
    """An error a rank or the feed recorded in the store."""

    def __init__(self, who: str, type_name: str, text: str):
        self.who, self.type_name, self.text = who, type_name, text

    @property
    def is_feed(self) -> bool:
        return self.who == FEED

    def describe(self) -> str:
        return f"{'the feed' if self.is_feed else 'rank ' + self.who}: {self.text}"


class RunStore:
    """One attempt of one run seen through its store: the keys, JSON values, error records
    and bounded waits. ``store`` is anything with ``set/get/add/check`` and
    ``compare_set`` (the library's authenticated store client, or a local stand-in)."""

    def __init__(self, store, attempt: int = 0, world_size: int = 1, timeout: float = TIMEOUT):
        self.store = store
        self.keys = RunKeys(attempt)
        self.attempt = attempt
        self.world_size = world_size
        self.timeout = timeout

    # ------------------------------------------------------------------ values
    def set(self, key: str, value: Union[bytes, str]) -> None:
        self.store.set(key, value)

    def get(self, key: str) -> bytes:
        return self.store.get(key)

    def has(self, key: str) -> bool:
        return bool(self.store.check([key]))

    def add(self, key: str, amount: int) -> int:
        return int(self.store.add(key, amount))

    def count(self, key: str) -> int:
        return self.add(key, 0)

    def set_json(self, key: str, value: Any) -> None:
        self.store.set(key, json.dumps(value))

    def get_json(self, key: str) -> Any:
        return json.loads(self.store.get(key).decode("utf-8"))

    def get_text(self, key: str) -> str:
        return self.store.get(key).decode("utf-8")

    # ------------------------------------------------------------------ errors
    def record_error(self, who: Union[int, str], text: str, type_name: str = "") -> None:
        """Record an error of a rank (or of the ``FEED``); the client reports the first."""
        self.set_json(self.keys.error(who), {"type": type_name, "text": text})
        self.store.compare_set(self.keys.first_error, "", str(who))

    def first_error(self) -> Optional[RecordedError]:
        if not self.has(self.keys.first_error):
            return None
        who = self.get_text(self.keys.first_error)
        record = self.get_json(self.keys.error(who))
        return RecordedError(who, str(record.get("type", "")), str(record.get("text", "")))

    def peer_error(self, rank: Optional[int] = None) -> Optional[str]:
        """Another rank's (or the feed's) recorded error, described; None if there is none."""
        for who in [*range(self.world_size), FEED]:
            if who != rank and self.has(self.keys.error(who)):
                record = self.get_json(self.keys.error(who))
                return RecordedError(str(who), record.get("type", ""),
                                     record.get("text", "")).describe()
        return None

    # ------------------------------------------------------------------ waits
    def wait_for(self, key: str, what: str, rank: Optional[int] = None,
                 timeout: Optional[float] = None) -> bytes:
        """The value of ``key`` once someone sets it; fails fast when a peer of ``rank``
        failed, and after the timeout with an error naming ``what``."""
        wait_until(lambda: self.has(key), self.timeout if timeout is None else timeout,
                   what, failed=lambda: self.peer_error(rank), who=_who(rank))
        return self.get(key)

    def wait_for_ranks(self, key_of: Callable[[int], str], what: str,
                       rank: Optional[int] = None, timeout: Optional[float] = None,
                       ranks: Optional[Sequence[int]] = None) -> None:
        """Until ``key_of(r)`` exists for every rank r; the timeout names the missing ranks."""
        ranks = list(range(self.world_size)) if ranks is None else list(ranks)

        def missing() -> List[int]:
            return [r for r in ranks if not self.has(key_of(r))]

        wait_until(lambda: not missing(), self.timeout if timeout is None else timeout, what,
                   failed=lambda: self.peer_error(rank), missing=missing, who=_who(rank))


def _who(rank: Optional[int]) -> str:
    return "The client" if rank is None else f"Rank {rank}"


def wait_until(ready: Callable[[], Optional[T]], timeout: float, what: str, *,
               failed: Optional[Callable[[], Optional[str]]] = None,
               missing: Optional[Callable[[], List[int]]] = None,
               who: str = "", hint: str = "", poll: float = POLL_INTERVAL,
               error: type = RendezvousTimeoutError) -> T:
    """The library's one bounded wait: poll ``ready()`` until it returns something truthy
    (which is returned). ``failed()`` returning a message ends the wait at once with a
    WorkerError; past ``timeout`` seconds the error says what was awaited and, through
    ``missing()``, which ranks never arrived."""
    from ..errors import WorkerError

    deadline = time.monotonic() + timeout
    while True:
        value = ready()
        if value:
            return value
        problem = failed() if failed is not None else None
        if problem:
            raise WorkerError(f"{who or 'A worker'} stopped waiting for {what}: {problem}")
        if time.monotonic() >= deadline:
            absent = missing() if missing is not None else []
            ranks = f"; rank(s) {absent} never arrived" if absent else ""
            raise error(f"{who or 'A wait'} timed out after {timeout:.0f} s waiting for "
                        f"{what}{ranks}{'. ' + hint if hint else ''}")
        time.sleep(poll)
