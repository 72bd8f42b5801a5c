"""Online training inside a Flink job: one subtask of a keyed process function per rank, alive
as long as the job, emitting one model-version row per update. Runs in Flink's Python workers.

Protocol (every rank runs the same sequence of collectives, so they always pair up):
- a rank *syncs* when its buffer holds its share of ``global_batch_size`` rows, when its
  heartbeat timer fires (every ``heartbeat_ms``: an idle or slower rank never leaves the
  others waiting for longer than that), and at the end of a bounded input;
- a sync all-gathers every rank's buffered row count and end-of-input flag; while the
  buffers hold ``global_batch_size`` rows in all, an *update* takes exactly that many
  (allocation computed identically on every rank); once every rank's input ended, a last
  update takes what is left;
- an update: each rank's gradient of (its rows' loss x its rows / update rows) is summed on
  rank 0, which steps the optimizer and broadcasts the new weights; rank 0 then emits the
  version row and writes version, weights and optimizer state to Flink keyed state, so a
  checkpoint carries them and a restarted job continues from them (versions keep rising).
Only rank 0 holds optimizer state, so restoring rank 0's state is restoring the run.

With ``window_ms`` (event-time tumbling windows instead of ``global_batch_size``) rows are
buffered by window; a sync (a window-end event-time timer, the heartbeat, the end of input)
all-gathers the ranks' watermarks, and every window that ends at or before the smallest of them
(all of them at the end of input) makes one update of all its rows, oldest window first. A row
whose window was already trained on arrives late: it is dropped and counted, as Flink's window
operators do with allowed lateness 0.
"""

import datetime
import io
import json
import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction
from pyflink.datastream.state import ValueStateDescriptor

from ..core.types import DataType
from ..errors import InvalidDataError, WorkerError
from ..client.failures import lost_peer
from .metrics import metric_group
from .orphan_guard import start_orphan_guard
from ..dataplane.protocol import RunStore
from ..dataplane.rendezvous import RendezvousInfo, connect
from ..dataplane.store import torch_store
from ..core.engine import _model_dtype, _tensor

__all__ = ["OnlineSpec", "OnlineLearner", "OnlineTrainer", "allocate", "VERSION_FIELDS",
           "END_OF_INPUT"]

#: the model-data row's fields after the version column, in order
VERSION_FIELDS = ("versionTime", "format", "model", "spec", "rowsTrained", "loss")
#: the event-time timer that fires when a bounded input ends (Flink's final watermark)
END_OF_INPUT = (1 << 63) - 1


@dataclass
class OnlineSpec:
    """Everything the online trainer needs, shipped inside the Flink job."""

    model: torch.nn.Module
    loss: Callable
    optimizer_creator: Callable
    feature_cols: List[str]
    feature_types: List[str]
    label_col: str
    label_type: str
    global_batch_size: int
    world_size: int
    rendezvous: RendezvousInfo
    timeout: float
    heartbeat_ms: int
    model_spec: Dict[str, Any]  # ModelSpec JSON of the version rows (input names included)
    emit_initial: bool = False  # a warm start: publish the initial weights as version 0
    seed: int = 0  # seeds torch on every rank (dropout and other randomness in the loss)
    num_threads: int = 0
    window_ms: Optional[int] = None  # event-time tumbling windows instead of global batches


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


class _Update:
    """One update's outcome on rank 0."""

    def __init__(self, rows: int, loss: float, time_ms: int):
        self.rows, self.loss, self.time_ms = rows, loss, time_ms


class OnlineLearner:
    """The distributed part, free of Flink: buffers rows, syncs, updates. ``emit`` receives
    each update on rank 0 (the Flink function turns it into a version row and state)."""

    def __init__(self, spec: OnlineSpec, rank: int):
        self.spec, self.rank, self.world = spec, rank, spec.world_size
        torch.manual_seed(spec.seed)
        self.model = spec.model
        self.float_dtype = _model_dtype(self.model)
        self.optimizer = spec.optimizer_creator(self.model) if rank == 0 else None
        self.buffer: List[Tuple[tuple, Any, int]] = []  # (features, label, timestamp ms)
        self.version = 0
        batch = spec.global_batch_size or 0
        self.share = batch // self.world + (1 if rank < batch % self.world else 0)
        self.finished = False
        self.rows_trained = 0  # this rank's rows used in updates
        self.rows_late = 0  # window mode: rows whose window was already trained on
        self.trained_until = None  # window mode: windows ending at or before this are done
        self.last_loss = float("nan")

    def window_start(self, timestamp: int) -> int:
        """The start of the event-time tumbling window holding ``timestamp`` (ms)."""
        return timestamp - timestamp % self.spec.window_ms

    # ------------------------------------------------------------------ rows
    def add(self, features: tuple, label: Any, timestamp: Optional[int]) -> bool:
        """Buffer one row; True when this rank holds its share of an update."""
        for name, value in zip(self.spec.feature_cols, features):
            if value is None:
                raise InvalidDataError(f"Input column {name!r} holds NULL (online training, "
                                       f"rank {self.rank})")
        if label is None:
            raise InvalidDataError(f"Label column {self.spec.label_col!r} holds NULL (online "
                                   f"training, rank {self.rank})")
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
        spec = self.spec
        features = []
        for i, (name, type_name) in enumerate(zip(spec.feature_cols, spec.feature_types)):
            data_type = DataType.from_name(type_name)
            column = [r[0][i] for r in rows]
            values = np.asarray(column, dtype=data_type.numpy_dtype) if not data_type.is_array \
                else np.asarray([np.asarray(v, dtype=data_type.numpy_dtype) for v in column])
            features.append(_tensor(values, data_type, name, self.float_dtype, False))
        label_type = DataType.from_name(spec.label_type)
        labels = np.asarray([r[1] for r in rows], dtype=label_type.numpy_dtype) \
            if not label_type.is_array else \
            np.asarray([np.asarray(r[1], dtype=label_type.numpy_dtype) for r in rows])
        return features, _tensor(labels, label_type, spec.label_col, self.float_dtype, True)

    # ------------------------------------------------------------------ collectives
    def start(self, restored: Optional[Tuple[int, bytes, bytes]]) -> None:
        """The first collective of every rank (after each start of the job): rank 0's
        weights (restored from Flink state, or the initial ones) and version go to all."""
        import torch.distributed as dist

        if restored is not None and self.rank == 0:
            version, weights, optimizer = restored
            self.model.load_state_dict(torch.load(io.BytesIO(weights), weights_only=True))
            self.optimizer.load_state_dict(torch.load(io.BytesIO(optimizer),
                                                      weights_only=True))
            self.version = version
        header = torch.tensor([self.version], dtype=torch.int64)
        dist.broadcast(header, 0)
        self.version = int(header.item())
        for tensor in self.model.state_dict().values():
            dist.broadcast(tensor, 0)

    def sync(self, done: bool, watermark: Optional[int] = None) -> Iterator[_Update]:
        """One sync (see the module's docstring); yields each update (on rank 0)."""
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
            update = self._update(rows, sum(take))
            if update is not None:
                yield update
        if all_done:
            self.finished = True

    def _sync_windows(self, done: bool, watermark: Optional[int]) -> Iterator[_Update]:
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
        # a window [start, start + size) is complete once the watermark reaches its last ms
        closed = none if all_done else (low if watermark < low + size else
                                        self.window_start(watermark + 1))
        ready: Dict[int, list] = {}  # this rank's rows of the closed windows, by window
        waiting = []
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
            update = self._update(rows, int(total.item()))
            if update is not None:
                update.time_ms = window + size - 1  # the window's end, FlinkML's model time
                yield update
        if closed != low:
            self.trained_until = closed if self.trained_until is None else \
                max(self.trained_until, closed)
        if all_done:
            self.finished = True

    def _update(self, rows, total: int) -> Optional[_Update]:
        import torch.distributed as dist

        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        model.train()
        for p in params:
            p.grad = None
        loss_sum, newest = 0.0, max((r[2] for r in rows), default=-1)
        if rows:
            features, label = self._tensors(rows)
            loss = self.spec.loss(model(*features), label)
            if not torch.isfinite(loss):
                raise InvalidDataError(f"The loss is {loss.item()} on an update of online "
                                       f"training (rank {self.rank}); check the input and the "
                                       f"learning rate")
            (loss * (len(rows) / total)).backward()
            loss_sum = float(loss.detach()) * len(rows)
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                           for p in params])
        dist.reduce(grads, 0)
        stats = torch.tensor([loss_sum], dtype=torch.float64)
        dist.all_reduce(stats)
        stamp = torch.tensor([newest], dtype=torch.int64)
        dist.all_reduce(stamp, op=dist.ReduceOp.MAX)
        if self.rank == 0:
            offset = 0
            for p in params:
                n = p.numel()
                p.grad = grads[offset:offset + n].view_as(p).to(p.dtype)
                offset += n
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
        self.version += 1
        self.rows_trained += len(rows)
        self.last_loss = float(stats.item()) / total
        if self.rank != 0:
            return None
        time_ms = int(stamp.item()) if int(stamp.item()) >= 0 else int(time.time() * 1000)
        return _Update(total, float(stats.item()) / total, time_ms)

    def state_bytes(self) -> Tuple[bytes, bytes]:
        """Rank 0's weights and optimizer state, for Flink's keyed state."""
        weights, optimizer = io.BytesIO(), io.BytesIO()
        torch.save(self.model.state_dict(), weights)
        torch.save(self.optimizer.state_dict(), optimizer)
        return weights.getvalue(), optimizer.getvalue()


def _torchscript(model: torch.nn.Module, spec_json: Dict[str, Any]) -> bytes:
    from ..core.export import to_torchscript
    from ..core.spec import ModelSpec

    was_training = model.training
    try:
        return to_torchscript(model.eval(), ModelSpec.from_json(spec_json).sample_inputs())
    finally:
        model.train(was_training)


class OnlineTrainer(KeyedProcessFunction):
    """A rank of online training: elements are ``(rank marker, features..., label)``
    rows (the marker is the rank of a pad row, -1 for input rows)."""

    def __init__(self, spec: OnlineSpec):
        self._spec = spec

    def open(self, runtime_context) -> None:
        import torch.distributed as dist

        start_orphan_guard()
        spec = self._spec
        self._rank = runtime_context.get_index_of_this_subtask()
        self._attempt = runtime_context.get_attempt_number()
        if runtime_context.get_number_of_parallel_subtasks() != spec.world_size:
            raise WorkerError(f"The online trainer runs on "
                              f"{runtime_context.get_number_of_parallel_subtasks()} "
                              f"subtasks, not worker_num={spec.world_size}")
        threads = spec.num_threads or max(1, (os.cpu_count() or 1) // spec.world_size)
        torch.set_num_threads(threads)
        bytes_type = Types.PRIMITIVE_ARRAY(Types.BYTE())
        self._version_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_version", Types.LONG()))
        self._weights_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_weights", bytes_type))
        self._optimizer_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_optimizer", bytes_type))
        self._heartbeat_state = runtime_context.get_state(
            ValueStateDescriptor("ftm_heartbeat", Types.LONG()))
        self._learner = OnlineLearner(spec, self._rank)
        self._started = False
        self._rows_metric = self._rate_metric = None
        group = metric_group(runtime_context)
        if group is not None:  # live: a version leaves at each (100 ms) bundle's end
            learner = self._learner
            self._rows_metric = group.counter("rowsTrained")
            self._rate_metric = group.meter("rowsTrainedPerSecond", time_span_in_seconds=60)
            group.gauge("modelVersion", lambda: learner.version)
            group.gauge("rowsBuffered", lambda: len(learner.buffer))
            group.gauge("rowsLate", lambda: learner.rows_late)  # window mode
            # Flink's Python gauges carry integers: the loss times 10^6
            group.gauge("lastUpdateLossX1e6", lambda: 0 if learner.last_loss !=
                        learner.last_loss else int(round(learner.last_loss * 1e6)))
        self._run = RunStore(connect(spec.rendezvous), 1000 + self._attempt,
                             spec.world_size, spec.timeout)
        try:
            dist.init_process_group(
                "gloo", store=torch_store(self._run.store, f"online/{self._attempt}/pg/"),
                rank=self._rank, world_size=spec.world_size,
                timeout=datetime.timedelta(seconds=spec.timeout))
        except Exception as error:
            raise self._failure(error) from error

    def close(self) -> None:
        _abort_process_group()

    # -------------------------------------------------------------- entry points
    def process_element(self, value, ctx):
        try:
            yield from self._start(ctx)
            marker = value[0]
            if marker is not None and marker >= 0:  # a pad row: placement check
                if marker != self._rank:
                    raise WorkerError(f"The pad row of rank {marker} reached subtask "
                                      f"{self._rank}: the shard keys do not match this "
                                      f"job's max parallelism")
                return
            n = len(self._spec.feature_cols)
            if self._learner.finished:
                return
            timestamp = ctx.timestamp()
            if self._learner.add(tuple(value[1:1 + n]), value[1 + n], timestamp):
                yield from self._sync(False, ctx)
            elif self._spec.window_ms is not None and self._learner.buffer and \
                    self._learner.buffer[-1][2] == timestamp:  # buffered, not late
                end = self._learner.window_start(timestamp) + self._spec.window_ms - 1
                ctx.timer_service().register_event_time_timer(end)  # Flink dedups timers
        except Exception as error:
            raise self._failure(error) from error

    def on_timer(self, timestamp, ctx):
        from pyflink.datastream import TimeDomain

        try:
            yield from self._start(ctx)
            if timestamp == END_OF_INPUT:
                while not self._learner.finished:
                    yield from self._sync(True, ctx)
                return
            if self._learner.finished:
                return
            if ctx.time_domain() == TimeDomain.EVENT_TIME:  # a window's end passed
                yield from self._sync(False, ctx)
                return
            if timestamp != self._heartbeat_state.value():
                return  # a heartbeat chain superseded by a newer one
            yield from self._sync(False, ctx)
            self._arm_heartbeat(ctx)
        except Exception as error:
            raise self._failure(error) from error

    # -------------------------------------------------------------- helpers
    def _start(self, ctx):
        """On the first call after (re)start: restore rank 0's state, share it, arm the
        heartbeat and end-of-input timers; a warm start publishes version 0."""
        if self._started:
            return
        self._started = True
        restored = None
        if self._rank == 0 and self._version_state.value() is not None:
            restored = (int(self._version_state.value()),
                        bytes(self._weights_state.value()),
                        bytes(self._optimizer_state.value()))
        self._learner.start(restored)
        if self._heartbeat_state.value() is None:  # else the checkpointed timer still runs
            self._arm_heartbeat(ctx)
        ctx.timer_service().register_event_time_timer(END_OF_INPUT)
        if self._rank == 0 and restored is None and self._spec.emit_initial:
            yield self._version_row(0, 0, float("nan"), int(time.time() * 1000))

    def _arm_heartbeat(self, ctx) -> None:
        """One heartbeat timer per rank: its time is kept in state, so after a restart the
        restored timer goes on and no second chain starts."""
        service = ctx.timer_service()
        at = service.current_processing_time() + self._spec.heartbeat_ms
        self._heartbeat_state.update(at)
        service.register_processing_time_timer(at)

    def _sync(self, done: bool, ctx):
        before = self._learner.rows_trained
        watermark = ctx.timer_service().current_watermark() \
            if self._spec.window_ms is not None else None
        for update in self._learner.sync(done, watermark):
            yield self._version_row(self._learner.version, update.rows, update.loss,
                                    update.time_ms)
        if self._rows_metric is not None and self._learner.rows_trained > before:
            self._rows_metric.inc(self._learner.rows_trained - before)
            self._rate_metric.mark_event(self._learner.rows_trained - before)

    def _version_row(self, version: int, rows: int, loss: float, time_ms: int):
        learner = self._learner
        if learner.optimizer is not None:
            weights, optimizer = learner.state_bytes()
            self._version_state.update(version)
            self._weights_state.update(weights)
            self._optimizer_state.update(optimizer)
        model_bytes = _torchscript(learner.model, self._spec.model_spec)
        return Row(version, time_ms, "torchscript", model_bytes,
                   json.dumps(self._spec.model_spec), rows, loss)

    def _failure(self, error: BaseException) -> BaseException:
        """The error the job fails with: names the rank, and the root cause when a
        peer failed first (recorded in the run's store)."""
        if isinstance(error, WorkerError) and str(error).startswith("Online training"):
            return error
        text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
        world = self._spec.world_size
        try:
            self._run.record_error(self._rank, text, type(error).__name__)
            earlier = self._run.peer_error(self._rank) if lost_peer(str(error)) else None
        except Exception:  # the store is gone: report our own error
            earlier = None
        _abort_process_group()  # peers blocked in a collective fail now, not at the timeout
        if earlier:
            return WorkerError(f"Online training rank {self._rank} of {world} stopped: "
                               f"{earlier}")
        return WorkerError(f"Online training rank {self._rank} of {world} failed: {text}")


def _abort_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort while failing
            pass
