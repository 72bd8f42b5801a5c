"""The data plane from Flink to the PyTorch workers: columnar batches shipped over TCP while the
source still runs, so a worker's shard is in its memory when the input ends.

A ``FeedServer`` runs in each worker's Python process; ``FeedSender`` runs in the Python
processes of the operator that reads the table (its vectorized UDF gets Arrow batches from
Flink). The sender looks the server's address up in the run's store, sends each batch as one
length-prefixed frame and waits for the server's acknowledgement, so every batch a sender's
call returned for is in a worker's memory. Every wait is bounded. Free of Flink imports.
"""

import pickle
import socket
import struct
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["FeedServer", "FeedSender", "FeedError", "LivenessWatch"]

_HEADER = struct.Struct("<Q")
_ACK = b"\x01"


class FeedError(ConnectionError):
    """A batch could not be delivered to a PyTorch worker, or arrived damaged."""


def _recv_exactly(sock: socket.socket, size: int) -> Optional[memoryview]:
    """``size`` bytes from ``sock``; None at a clean end of stream before the first byte."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            if got == 0:
                return None
            raise FeedError(f"the connection closed after {got} of {size} bytes of a batch")
        got += n
    return view


class FeedServer:
    """Receives the batches of one worker's shard; one thread per connected sender."""

    def __init__(self, address: str, timeout: float):
        self._sock = socket.create_server((address, 0))
        self.address = f"{address}:{self._sock.getsockname()[1]}"
        self._timeout = timeout
        self._lock = threading.Lock()
        self._batches: List[List[np.ndarray]] = []
        self.rows = 0
        self.first_batch_at: Optional[float] = None
        self.error: Optional[BaseException] = None
        self._closed = False
        self._connections: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="ftm-feed-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True,
                             name="ftm-feed-recv").start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                while True:
                    header = _recv_exactly(conn, _HEADER.size)
                    if header is None:
                        return
                    (size,) = _HEADER.unpack(header)
                    payload = _recv_exactly(conn, size)
                    if payload is None:
                        raise FeedError("the connection closed before a batch's payload")
                    columns = pickle.loads(payload)
                    with self._lock:
                        self._batches.append(columns)
                        self.rows += len(columns[0]) if columns else 0
                        if self.first_batch_at is None:
                            self.first_batch_at = time.time()
                    conn.sendall(_ACK)
        except BaseException as error:  # noqa: BLE001 - reported at end of input
            if not self._closed:
                with self._lock:
                    self.error = self.error or error

    def columns(self, expected_rows: int) -> List[np.ndarray]:
        """The whole shard, column by column, once ``expected_rows`` rows have arrived (they
        have when every sender's call returned; the wait only covers a late acknowledgement).
        Hands the batches over: call it once."""
        deadline = time.monotonic() + self._timeout
        while True:
            with self._lock:
                if self.error is not None:
                    raise FeedError(f"Receiving the shard failed: {self.error!r}") \
                        from self.error
                if self.rows >= expected_rows:
                    batches, rows = self._batches, self.rows
                    self._batches = []  # the caller owns the shard now: one copy in memory
                    break
            if time.monotonic() > deadline:
                raise FeedError(f"Only {self.rows} of the {expected_rows} rows sent to this "
                                f"worker arrived within {self._timeout:.0f} s")
            time.sleep(0.01)
        if rows != expected_rows:
            raise FeedError(f"This worker received {rows} rows, but the senders reported "
                            f"{expected_rows}: a batch was delivered twice")
        if not batches:
            return []
        if len(batches) == 1:
            return batches[0]
        columns = []
        for index in range(len(batches[0])):  # column by column, freeing each as it goes
            columns.append(np.concatenate([batch[index] for batch in batches]))
            for batch in batches:
                batch[index] = None
        return columns

    def close(self) -> None:
        """Stop receiving (senders still connected get an error) and free the batches."""
        with self._lock:
            self._closed = True
            self._batches = []
            sockets, self._connections = [self._sock] + self._connections, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept/recv
            except OSError:
                pass
            sock.close()


class FeedSender:
    """Ships batches to the workers' servers, round-robin, so any number of senders gives
    every worker a near-equal share. ``lookup(rank)`` returns a worker's ``host:port`` (it
    waits, bounded, until the worker published it); ``sent(rank, rows)`` records each
    delivered batch (the worker checks the total at end of input)."""

    def __init__(self, world_size: int, first_target: int, timeout: float,
                 lookup: Callable[[int], str], sent: Callable[[int, int], None]):
        self._world_size = world_size
        self._next = first_target % world_size
        self._timeout = timeout
        self._lookup, self._sent = lookup, sent
        self._connections: Dict[int, Tuple[socket.socket, str]] = {}

    def send(self, columns: List[np.ndarray]) -> int:
        """Deliver one batch to the next worker; returns that worker's rank."""
        rank = self._next
        self._next = (self._next + 1) % self._world_size
        rows = len(columns[0]) if columns else 0
        payload = pickle.dumps(columns, protocol=5)
        conn, address = self._connection(rank)
        try:
            conn.sendall(_HEADER.pack(len(payload)))
            conn.sendall(payload)
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
        return rank

    def _connection(self, rank: int) -> Tuple[socket.socket, str]:
        if rank not in self._connections:
            address = self._lookup(rank)
            host, port = address.rsplit(":", 1)
            try:
                conn = socket.create_connection((host, int(port)), timeout=self._timeout)
            except OSError as error:
                raise FeedError(f"Could not connect to PyTorch worker rank {rank} at {address} "
                                f"({error!r})") from error
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._connections[rank] = (conn, address)
        return self._connections[rank]

    def _drop(self, rank: int) -> None:
        conn, _ = self._connections.pop(rank, (None, None))
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for rank in list(self._connections):
            self._drop(rank)


class LivenessWatch:
    """Holds an idle connection to every worker's feed server (``addresses()`` returns the
    ones published so far): when a worker's process dies, its kernel closes the connection at
    once, so the client can tell which rank died first, on any host it can reach."""

    def __init__(self, addresses: Callable[[], Dict[int, str]], poll: float = 0.1):
        import selectors

        self.died: Dict[int, int] = {}  # rank -> the watch's wake-up that saw it go
        self._wakes: List[float] = []
        self._blind = False  # some worker could not be watched: never name a rank
        self._stop = threading.Event()
        selector = selectors.DefaultSelector()
        watched: Dict[int, Optional[socket.socket]] = {}  # None: could not be reached

        def run():
            try:
                while not self._stop.is_set():
                    try:
                        published = addresses()
                    except Exception:  # the store is gone: the run is over
                        return
                    for rank, address in published.items():
                        if rank in watched or rank in self.died:
                            continue
                        host, port = address.rsplit(":", 1)
                        try:
                            conn = socket.create_connection((host, int(port)), timeout=1.0)
                        except ConnectionRefusedError:  # published, nobody listens: gone
                            self.died.setdefault(rank, len(self._wakes))
                            self._wakes.append(time.monotonic())
                            continue
                        except OSError:  # unreachable from the client: cannot tell
                            watched[rank] = None
                            self._blind = True
                            continue
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
        if not died or self._blind:
            return []
        first = min(died.values())
        return sorted(r for r, wake in died.items() if wake == first)

    def stop(self) -> None:
        self._stop.set()
