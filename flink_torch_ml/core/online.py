"""Online training's protocol, free of Flink: which buffered rows make each model update, and
the update itself through the training engine (``TrainingLoop.run_update``).

Every rank runs the same sequence of collectives, so they always pair up:
- a rank *syncs* when its buffer holds its share of ``global_batch_size`` rows, on a heartbeat
  (an idle or slower rank never leaves the others waiting long), and at the end of a bounded
  input;
- a sync all-gathers every rank's buffered row count and end-of-input flag; while the buffers
  hold ``global_batch_size`` rows in all, an *update* takes exactly that many (:func:`allocate`,
  computed identically on every rank); once every rank's input ended, a last update takes what
  is left;
- with ``window_ms`` (event-time tumbling windows) a sync all-gathers the ranks' watermarks
  instead, and every window ending at or before the smallest of them (all of them at the end of
  input) makes one update of all its rows, oldest first. A row whose window was already
  trained on is late: dropped and counted, as Flink's window operators do with allowed
  lateness 0.

Only rank 0's state is kept for restarts (the Flink function writes it to keyed state after
each update); :meth:`OnlineLearner.start` hands rank 0's weights, optimizer state and version
to every rank, as JSON and tensors (core.distributed), never pickles.
"""

import io
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ..errors import InvalidDataError
from .callbacks import Callback
from .distributed import broadcast_state
from .._defaults import ONLINE_HEARTBEAT_MS, TIMEOUT
from .engine import ModelSettings, TrainingLoop, tensors
from .rows import rows_to_columns

__all__ = ["OnlineSpec", "OnlineLearner", "Update", "allocate"]


@dataclass
class OnlineSpec(ModelSettings):
    """Everything an online rank needs, shipped inside the Flink job."""

    global_batch_size: Optional[int] = None  # rows per update; or window_ms
    world_size: int = 1
    rendezvous: Any = None  # dataplane.rendezvous.RendezvousInfo (the run's store and secret)
    timeout: float = TIMEOUT
    heartbeat_ms: int = ONLINE_HEARTBEAT_MS
    model_spec: Dict[str, Any] = field(default_factory=dict)  # ModelSpec JSON of versions
    emit_initial: bool = False  # a warm start: publish the initial weights as version 0
    seed: int = 0  # seeds torch on every rank (dropout and other randomness in the loss)
    num_threads: int = 0
    window_ms: Optional[int] = None  # event-time tumbling windows instead of global batches
    feature_widths: Optional[List[int]] = None  # array lengths (1 for scalars)
    metrics: Dict[str, Callable] = field(default_factory=dict)
    callbacks: List[Callback] = field(default_factory=list)
    loop: Optional[TrainingLoop] = None  # a user's subclass; default TrainingLoop()
    client_pid: int = 0  # the process that defined the job: no rank may run there


def allocate(counts: Sequence[int], batch: int) -> List[int]:
    """How many buffered rows each rank gives to an update of ``batch`` rows: first each
    rank's share (``batch / W``, the first ``batch % W`` ranks one more), then what is still
    missing from the ranks with more, in rank order. Same answer on every rank."""
    world = len(counts)
    shares = [batch // world + (1 if r < batch % world else 0) for r in range(world)]
    take = [min(c, s) for c, s in zip(counts, shares)]
    missing = batch - sum(take)
    for r in range(world):
        if missing <= 0:
            break
        extra = min(counts[r] - take[r], missing)
        take[r] += extra
        missing -= extra
    return take


class Update:
    """One update's outcome: rows in all, the prequential loss and metrics, its time."""

    def __init__(self, logs: Dict[str, Any], time_ms: int):
        self.logs, self.time_ms = logs, time_ms

    @property
    def rows(self) -> int:
        return int(self.logs["rows"])

    @property
    def loss(self) -> float:
        return float(self.logs["loss"])


class OnlineLearner:
    """One rank's side of online training: buffers rows, syncs with the other ranks and
    makes each update through the training loop. ``buffer`` holds ``(features, label,
    timestamp ms)`` rows."""

    def __init__(self, spec: OnlineSpec, rank: int):
        self.spec, self.rank, self.world = spec, rank, spec.world_size
        self.loop = spec.loop if spec.loop is not None else TrainingLoop()
        self.loop._setup_online(rank, self.world, spec)
        self.loop.save_model_fn = self.save_model
        self.model = self.loop.model
        self._features, self._label = spec.feature_columns(), spec.label_column()
        self.buffer: List[Tuple[tuple, Any, int]] = []
        batch = spec.global_batch_size or 0
        self.share = batch // self.world + (1 if rank < batch % self.world else 0)
        self.finished = False
        self.rows_trained = 0  # this rank's rows used in updates
        self.rows_late = 0  # window mode: rows whose window was already trained on
        self.trained_until: Optional[int] = None  # window mode: windows ending here are done
        self.last_logs: Dict[str, Any] = {}

    @property
    def version(self) -> int:
        return self.loop.version

    @property
    def last_loss(self) -> float:
        return float(self.last_logs.get("loss", float("nan")))

    def window_start(self, timestamp: int) -> int:
        """The start of the event-time tumbling window holding ``timestamp`` (ms)."""
        size = self.spec.window_ms
        assert size is not None  # called in window mode only
        return timestamp - timestamp % size

    # ------------------------------------------------------------------ rows
    def add(self, features: tuple, label: Any, timestamp: Optional[int]) -> bool:
        """Buffer one row; True when this rank holds its share of an update (count mode).
        Rows are checked by the row rule when their update is made."""
        if self.spec.window_ms is not None:
            if timestamp is None:
                raise InvalidDataError(
                    f"A row without event time reached online training with window_ms (rank "
                    f"{self.rank}): the input table needs a time attribute (a WATERMARK in "
                    f"its DDL)")
            if self.trained_until is not None and \
                    self.window_start(int(timestamp)) + self.spec.window_ms <= self.trained_until:
                self.rows_late += 1  # its window was already trained on
                return False
            self.buffer.append((features, label, int(timestamp)))
            return False  # windows are trained when the watermark passes them
        self.buffer.append((features, label, -1 if timestamp is None else int(timestamp)))
        return len(self.buffer) >= self.share

    def _tensors(self, rows) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The rows' features and labels, checked by the row rule, as tensors."""
        n = len(self._features)
        values = rows_to_columns([(*r[0], r[1]) for r in rows], range(n + 1))
        return tensors(values, self._features, self._label, self.loop.float_dtype,
                       f" (online training, rank {self.rank})")

    # ------------------------------------------------------------------ collectives
    def start(self, restored: Optional[Tuple[int, bytes, bytes]]) -> None:
        """The first collective of every rank (after each start of the job): rank 0's
        weights and optimizer state (restored from Flink state, or the initial ones) and its
        version go to every rank."""
        loop = self.loop
        if restored is not None and self.rank == 0:
            version, weights, optimizer = restored
            self.model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
            loop.optimizer.load_state_dict(torch.load(io.BytesIO(optimizer),
                                                      weights_only=True))
            loop.version = version
        if self.world > 1:
            state = broadcast_state({"version": loop.version, "model": self.model.state_dict(),
                                     "optimizer": loop.optimizer.state_dict()}, self.rank)
            if self.rank != 0:
                self.model.load_state_dict(state["model"])
                loop.optimizer.load_state_dict(state["optimizer"])
                loop.version = int(state["version"])
        loop.notify("on_train_begin")

    def finish(self) -> None:
        """After the last update of a bounded input."""
        self.finished = True
        self.loop.notify("on_train_end")

    def sync(self, done: bool, watermark: Optional[int] = None) -> Iterator[Update]:
        """One sync (see the module's docstring); yields each update made."""
        import torch.distributed as dist

        if self.spec.window_ms is not None:
            yield from self._sync_windows(done, watermark)
            return
        mine = torch.tensor([len(self.buffer), int(done)], dtype=torch.int64)
        gathered = [torch.zeros(2, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        counts = [int(g[0]) for g in gathered]
        all_done = all(int(g[1]) for g in gathered)
        batch = self.spec.global_batch_size
        assert batch is not None  # count mode: the estimator requires global_batch_size
        while True:
            total = sum(counts)
            if total >= batch:
                take = allocate(counts, batch)
            elif all_done and total > 0:
                take, batch = list(counts), total
            else:
                break
            rows = self.buffer[:take[self.rank]]
            del self.buffer[:take[self.rank]]
            counts = [c - t for c, t in zip(counts, take)]
            yield self._update(rows, sum(take))
        if all_done:
            self.finish()

    def _sync_windows(self, done: bool, watermark: Optional[int]) -> Iterator[Update]:
        """A window-mode sync: every window closed on all ranks makes one update."""
        import torch.distributed as dist

        low = -(1 << 63)
        mine = torch.tensor([low if watermark is None else int(watermark), int(done)],
                            dtype=torch.int64)
        gathered = [torch.zeros(2, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(gathered, mine)
        all_done = all(int(g[1]) for g in gathered)
        watermark = min(int(g[0]) for g in gathered)
        size, none = self.spec.window_ms, (1 << 63) - 1
        assert size is not None  # window mode only
        # a window [start, start + size) is complete once the watermark reaches its last ms
        closed = none if all_done else (low if watermark < low + size else
                                        self.window_start(watermark + 1))
        ready: Dict[int, list] = {}  # this rank's rows of the closed windows, by window
        waiting: List[Tuple[tuple, Any, int]] = []
        for row in self.buffer:
            start = self.window_start(row[2])
            (ready.setdefault(start, []) if start + size <= closed else waiting).append(row)
        self.buffer = waiting
        while True:
            oldest = torch.tensor([min(ready) if ready else none], dtype=torch.int64)
            dist.all_reduce(oldest, op=dist.ReduceOp.MIN)
            window = int(oldest.item())
            if window == none:
                break
            rows = ready.pop(window, [])
            total = torch.tensor([len(rows)], dtype=torch.int64)
            dist.all_reduce(total)
            # the window's end is the version's time, as FlinkML's windowed models have it
            yield self._update(rows, int(total.item()), window + size - 1)
        if closed != low:
            self.trained_until = closed if self.trained_until is None else \
                max(self.trained_until, closed)
        if all_done:
            self.finish()

    def _update(self, rows, total: int, time_ms: Optional[int] = None) -> Update:
        import torch.distributed as dist

        features, label = self._tensors(rows) if rows else self._empty()
        logs = self.loop.run_update(features, label, total)
        if time_ms is None:  # the newest row's event time, else now
            stamp = torch.tensor([max((r[2] for r in rows), default=-1)], dtype=torch.int64)
            if self.world > 1:
                dist.all_reduce(stamp, op=dist.ReduceOp.MAX)
            time_ms = int(stamp.item()) if int(stamp.item()) >= 0 else int(time.time() * 1000)
        self.rows_trained += len(rows)
        self.last_logs = logs
        return Update(logs, time_ms)

    def _empty(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Zero-row tensors: this rank has no rows in an update."""
        return [], torch.zeros(0)

    def model_bytes(self) -> bytes:
        """The current model as TorchScript bytes (a version row's ``model``)."""
        from .export import to_torchscript
        from .spec import ModelSpec

        model = self.model
        was_training = model.training
        try:
            return to_torchscript(model.eval(),
                                  ModelSpec.from_json(self.spec.model_spec).sample_inputs())
        finally:
            model.train(was_training)

    def save_model(self, path: str, model_format: str = "torchscript") -> None:
        """Save the current model in the library's format (``TrainingLoop.save_model``, for
        callbacks such as ModelCheckpoint and MLflowLogger)."""
        import copy

        from .export import export_model
        from .serialization import write_model_dir
        from .spec import ModelSpec

        spec = ModelSpec.from_json(self.spec.model_spec)
        module = copy.deepcopy(self.model).eval()
        names = list(self.spec.model_spec.get("input_names") or spec.feature_cols)
        write_model_dir(path, model_format, export_model(module, spec, model_format), spec,
                        {"input_names": names}, overwrite=True)

    def state_bytes(self) -> Tuple[bytes, bytes]:
        """This rank's weights and optimizer state, for Flink's keyed state (rank 0's)."""
        weights, optimizer = io.BytesIO(), io.BytesIO()
        torch.save(self.model.state_dict(), weights)
        torch.save(self.loop.optimizer.state_dict(), optimizer)
        return weights.getvalue(), optimizer.getvalue()
