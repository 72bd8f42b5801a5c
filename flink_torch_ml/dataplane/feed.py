"""The data plane from Flink to the PyTorch workers: columnar batches shipped over TCP while the
source still runs, so a worker's shard is in its memory when the input ends.

A ``FeedServer`` runs in each worker's Python process; ``FeedSender`` runs in the Python
processes of the operator that reads the table (its vectorized UDF gets Arrow batches from
Flink). The sender looks the server's address up in the run's store, authenticates with the
run's secret, sends each batch as one Arrow IPC frame and waits for the server's
acknowledgement, so every batch a sender's call returned for is in a worker's memory. A
connection that fails the handshake or the framing is closed without touching the shard.
Every wait is bounded. Free of Flink imports.
"""

import socket
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple, cast

from ..errors import FeedError
import numpy as np

from .columns import Columns, concat_columns, decode_columns, encode_columns, row_hashes, take
from .wire import (AuthenticatedServer, Security, open_connection,
                   recv_frame, send_frame)

__all__ = ["FeedServer", "FeedSender", "LivenessWatch", "connect_authenticated"]

_ACK = b"\x01"


def connect_authenticated(address: str, security: Security, timeout: float) -> socket.socket:
    """An authenticated connection to a feed server at ``host:port``."""
    host, port = address.rsplit(":", 1)
    return open_connection(host, int(port), security, timeout)


class FeedServer(AuthenticatedServer):
    """Receives the batches of one worker's shard; one thread per connected sender. Only
    peers that pass the handshake are read; a stranger's connection is closed and logged,
    and never affects the shard."""

    def __init__(self, address: str, timeout: float, security: Security, **limits):
        self._timeout = timeout
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._batches: List[Columns] = []
        self.rows = 0
        self.first_batch_at: Optional[float] = None
        self.error: Optional[BaseException] = None
        super().__init__(address, security, "a PyTorch worker's feed", **limits)
        self.address = f"{address}:{self.port}"

    def serve(self, conn: socket.socket, peer) -> None:
        try:
            while True:
                payload = recv_frame(conn, self._security.max_frame_bytes,
                                     stall=self.frame_stall)
                if payload is None:
                    return
                columns = decode_columns(payload)
                del payload
                with self._lock:
                    self._batches.append(columns)
                    self.rows += len(columns[0]) if columns else 0
                    if self.first_batch_at is None:
                        self.first_batch_at = time.time()
                    self._arrived.notify_all()
                conn.sendall(_ACK)
        except BaseException as error:  # noqa: BLE001 - an authenticated sender broke: the
            if not self.closed:          # shard is incomplete; reported at end of input
                with self._lock:
                    self.error = self.error or error
                    self._arrived.notify_all()

    def columns(self, expected_rows: int) -> Columns:
        """The whole shard, column by column, once ``expected_rows`` rows have arrived (they
        have when every sender's call returned; the wait only covers a late acknowledgement).
        Hands the batches over: call it once."""
        with self._lock:
            arrived = self._arrived.wait_for(
                lambda: self.error is not None or self.rows >= expected_rows, self._timeout)
            if self.error is not None:
                raise FeedError(f"Receiving the shard failed: {self.error!r}") from self.error
            if not arrived:
                raise FeedError(f"Only {self.rows} of the {expected_rows} rows sent to this "
                                f"worker arrived within {self._timeout:.0f} s")
            batches, rows = self._batches, self.rows
            self._batches = []  # the caller owns the shard now: one copy in memory
        if rows != expected_rows:
            raise FeedError(f"This worker received {rows} rows, but the senders reported "
                            f"{expected_rows}: a batch was delivered twice")
        if len(batches) <= 1:
            return batches[0] if batches else []
        columns = []
        for index in range(len(batches[0])):  # column by column, freeing each as it goes
            columns.append(concat_columns([[batch[index]] for batch in batches])[0])
            for batch in batches:
                cast(List[Optional[np.ndarray]], batch)[index] = None
        return columns

    def close(self) -> None:
        """Stop receiving (senders still connected get an error) and free the batches."""
        super().close()
        with self._lock:
            self._batches = []


class FeedSender:
    """Ships batches to the workers' servers. ``by_content=False``: whole batches,
    round-robin, so any number of senders gives every worker a near-equal share;
    ``by_content=True``: each row to the rank its content hashes to, so a rank's rows are
    the same whatever the arrival order (deterministic, resumable fits). ``lookup(rank)``
    returns a worker's ``host:port`` (it waits, bounded, until the worker published it);
    ``sent(rank, rows)`` records each delivered batch (the worker checks the total at end
    of input)."""

    def __init__(self, world_size: int, first_target: int, timeout: float, security: Security,
                 lookup: Callable[[int], str], sent: Callable[[int, int], None],
                 by_content: bool = False):
        self._world_size = world_size
        self._by_content = by_content
        self._next = first_target % world_size
        self._timeout = timeout
        self._security = security
        self._lookup, self._sent = lookup, sent
        self._connections: Dict[int, Tuple[socket.socket, str]] = {}

    def send(self, columns: Columns) -> None:
        """Deliver one batch: to the next worker, or row by row to their content's ranks."""
        if not self._by_content or self._world_size == 1:
            rank = self._next
            self._next = (self._next + 1) % self._world_size
            self._deliver(rank, columns)
            return
        targets = row_hashes(columns) % np.uint64(self._world_size)
        for rank in range(self._world_size):
            index = np.flatnonzero(targets == rank)
            if len(index):
                self._deliver(rank, take(columns, index))

    def _deliver(self, rank: int, columns: Columns) -> None:
        rows = len(columns[0]) if columns else 0
        payload = encode_columns(columns)
        conn, address = self._connection(rank)
        try:
            send_frame(conn, payload)
            ack = conn.recv(1)
        except OSError as error:
            self._drop(rank)
            raise FeedError(f"Sending {rows} rows to PyTorch worker rank {rank} at {address} "
                            f"failed ({error!r}): the worker died or does not answer within "
                            f"{self._timeout:.0f} s") from error
        if ack != _ACK:
            self._drop(rank)
            raise FeedError(f"PyTorch worker rank {rank} at {address} closed the connection "
                            f"instead of acknowledging {rows} rows (it failed; see its error)")
        self._sent(rank, rows)

    def _connection(self, rank: int) -> Tuple[socket.socket, str]:
        if rank not in self._connections:
            address = self._lookup(rank)
            try:
                conn = connect_authenticated(address, self._security, self._timeout)
            except OSError as error:
                raise FeedError(f"Could not connect to PyTorch worker rank {rank} at {address} "
                                f"({error!r})") from error
            self._connections[rank] = (conn, address)
        return self._connections[rank]

    def _drop(self, rank: int) -> None:
        conn, _ = self._connections.pop(rank, (None, None))
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for rank in list(self._connections):
            self._drop(rank)


LIVENESS_CONNECT_TRIES = 10  # a worker's feed server that never answers: do not name ranks


class LivenessWatch:
    """Holds an idle connection to every worker's feed server (``addresses()`` returns the
    ones published so far): when a worker's process dies, its kernel closes the connection at
    once, so the client can tell which rank died first, on any host it can reach."""

    def __init__(self, addresses: Callable[[], Dict[int, str]], security: Security,
                 poll: float = 0.1):
        import selectors

        self.died: Dict[int, int] = {}  # rank -> the watch's wake-up that saw it go
        self._wakes: List[float] = []
        self._blind = False  # some worker could not be watched: never name a rank
        self._pending: Set[int] = set()  # published, not yet watched (a slow handshake)
        self._stop = threading.Event()
        selector = selectors.DefaultSelector()
        watched: Dict[int, Optional[socket.socket]] = {}  # None: could not be reached
        tries: Dict[int, int] = {}  # rank -> failed connection attempts

        def run():
            try:
                while not self._stop.is_set():
                    try:
                        published = addresses()
                    except Exception:  # the store is slow or gone: watch what we have
                        published = {}
                    for rank, address in published.items():
                        if rank in watched or rank in self.died:
                            continue
                        try:
                            conn = connect_authenticated(address, security, 1.0)
                            conn.settimeout(None)
                        except ConnectionRefusedError:  # published, nobody listens: gone
                            self._pending.discard(rank)
                            self.died.setdefault(rank, len(self._wakes))
                            self._wakes.append(time.monotonic())
                            continue
                        except OSError:  # a busy worker, or unreachable: try again
                            tries[rank] = tries.get(rank, 0) + 1
                            if tries[rank] < LIVENESS_CONNECT_TRIES:
                                self._pending.add(rank)
                            else:  # unreachable from the client: cannot tell
                                self._pending.discard(rank)
                                watched[rank] = None
                                self._blind = True
                            continue
                        self._pending.discard(rank)
                        watched[rank] = conn
                        selector.register(conn, selectors.EVENT_READ, rank)
                    if not selector.get_map():
                        self._stop.wait(poll)
                        continue
                    events = selector.select(timeout=poll)
                    wake = len(self._wakes)  # connections found closed at the same wake-up
                    for key, _ in events:
                        try:
                            data = key.fileobj.recv(1)
                        except OSError:
                            data = b""
                        if not data:
                            self.died.setdefault(key.data, wake)
                            selector.unregister(key.fileobj)
                            key.fileobj.close()
                    if events:
                        self._wakes.append(time.monotonic())
            finally:
                for conn in watched.values():
                    if conn is not None:
                        conn.close()
                selector.close()

        threading.Thread(target=run, daemon=True, name="ftm-liveness-watch").start()

    def first_dead(self) -> List[int]:
        """The rank(s) whose connection dropped first: the watch wakes up as soon as one
        drops, so later ones (the job tearing the others down) come at later wake-ups."""
        died = dict(self.died)
        if not died or self._blind or self._pending:  # a rank we could not watch may be first
            return []
        first = min(died.values())
        return sorted(r for r, wake in died.items() if wake == first)

    def stop(self) -> None:
        self._stop.set()
