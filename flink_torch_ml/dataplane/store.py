"""The rendezvous store: a small key-value server the client hosts for one run, and the
client the workers (and the client itself) use to reach it.

Why not ``torch.distributed.TCPStore``: it accepts any connection that reaches its port and
has no way to authenticate one, and on a cluster it must listen where every TaskManager
can reach it. This store speaks the library's authenticated protocol (``wire.py``: HMAC
challenge-response with the run's secret, bounded frames, optional TLS); requests and
replies are a JSON header plus raw value bytes, so nothing received is ever unpickled.
``torch_store`` adapts a client to ``torch.distributed.Store``, so gloo process groups
rendezvous through it too.

The server runs in the client process; the clients run in Flink's Python workers.
"""

import json
import math
import logging
import socket
import threading
import time
from typing import Dict, Optional, Sequence, Tuple, Union

from ..errors import AuthenticationError, FrameError, RendezvousError
from .wire import (AuthenticatedServer, Security, open_connection,
                   recv_frame, send_frame)

__all__ = ["StoreServer", "StoreClient", "torch_store"]

log = logging.getLogger("flink_torch_ml")

#: longest single server-side wait of a blocking request; clients loop over such waits, so
#: other threads sharing the connection are never blocked for long
_WAIT_SLICE = 0.25


Value = Union[bytes, str]


def _as_bytes(value: Value) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _split(frame: memoryview) -> Tuple[dict, memoryview]:
    """A frame's JSON header (up to the first newline) and its raw value bytes. A header that
    is not a JSON object of plain values (no NaN or infinities, no deep nesting) raises
    FrameError."""
    raw = bytes(frame[:min(len(frame), _HEADER_LIMIT)])
    end = raw.find(b"\n")
    if end < 0:
        raise FrameError("a store message has no header line")
    try:
        header = json.loads(raw[:end].decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise FrameError(f"a store message header is not plain JSON ({error})") from None
    if not isinstance(header, dict):
        raise FrameError("a store message header is not a JSON object")
    return header, frame[end + 1:]


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number")


#: a request's fields and their checks: every field validated before it is used
_KEY_LIMIT, _KEYS_LIMIT, _HEADER_LIMIT = 4096, 4096, 65536


def _request(header: dict) -> dict:
    """The request, its fields checked (types, finite bounded numbers, sizes); FrameError
    for anything else, which closes that connection only."""
    op = header.get("op")
    fields = _OPS.get(op) if isinstance(op, str) else None
    if fields is None:
        raise FrameError(f"unknown store operation {op!r}")
    request = {"op": op}
    for name in fields:
        value = header.get(name)
        if name == "key":
            if not isinstance(value, str) or len(value) > _KEY_LIMIT:
                raise FrameError("a store request's key must be a string of at most 4096 "
                                 "characters")
        elif name == "keys":
            if not isinstance(value, list) or len(value) > _KEYS_LIMIT or not all(
                    isinstance(k, str) and len(k) <= _KEY_LIMIT for k in value):
                raise FrameError("a store request's keys must be a list of strings")
        elif name == "wait":
            value = 0.0 if value is None else value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise FrameError("a store request's wait must be a finite number >= 0")
            value = min(float(value), _WAIT_SLICE)
        elif name == "amount":
            if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 1 << 62:
                raise FrameError("a store request's amount must be an integer below 2**62")
        elif name == "expected":
            if not isinstance(value, str):
                raise FrameError("a store request's expected value must be a string")
        request[name] = value
    return request


_OPS = {"set": ("key",), "get": ("key", "wait"), "add": ("key", "amount"),
        "check": ("keys", "wait"), "compare_set": ("key", "expected"), "delete": ("key",),
        "num_keys": ()}


def _message(header: dict, value: bytes = b"") -> Tuple[bytes, bytes]:
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n", value


class StoreServer(AuthenticatedServer):
    """The data lives in one dict guarded by a condition; a thread per connection."""

    def __init__(self, bind: str, security: Security, **limits):
        self._data: Dict[str, bytes] = {}
        self._cond = threading.Condition()
        super().__init__(bind, security, "the rendezvous store", **limits)

    def serve(self, conn: socket.socket, peer) -> None:
        try:
            while not self.closed:
                frame = recv_frame(conn, self._security.max_frame_bytes,
                                   stall=self.frame_stall)
                if frame is None:
                    return
                header, value = _split(frame)
                send_frame(conn, *self._handle(_request(header), value))
        except Exception as error:  # noqa: BLE001 - a client that broke the protocol: close it
            self.reject(peer, error)

    def _handle(self, header: dict, value: memoryview) -> Tuple[bytes, bytes]:
        op = header["op"]
        with self._cond:
            if op == "set":
                self._data[str(header["key"])] = bytes(value)
                self._cond.notify_all()
                return _message({"ok": True})
            if op == "get":  # waits up to a short slice for the key
                key = str(header["key"])
                self._cond.wait_for(lambda: key in self._data or self.closed,
                                    min(float(header.get("wait", 0)), _WAIT_SLICE))
                if key in self._data:
                    return _message({"ok": True, "found": True}, self._data[key])
                return _message({"ok": True, "found": False})
            if op == "add":
                key = str(header["key"])
                number = int(self._data.get(key, b"0")) + int(header["amount"])
                self._data[key] = str(number).encode()
                self._cond.notify_all()
                return _message({"ok": True, "value": number})
            if op == "check":
                keys = [str(k) for k in header["keys"]]
                self._cond.wait_for(lambda: all(k in self._data for k in keys) or self.closed,
                                    min(float(header.get("wait", 0)), _WAIT_SLICE))
                return _message({"ok": True, "value": all(k in self._data for k in keys)})
            if op == "compare_set":
                key = str(header["key"])
                expected = header["expected"].encode("latin-1")
                current = self._data.get(key)
                if current is None and expected == b"" or current == expected:
                    self._data[key] = bytes(value)
                    self._cond.notify_all()
                    return _message({"ok": True}, bytes(value))
                return _message({"ok": True}, current if current is not None else expected)
            if op == "delete":
                existed = self._data.pop(str(header["key"]), None) is not None
                return _message({"ok": True, "value": existed})
            if op == "num_keys":
                return _message({"ok": True, "value": len(self._data)})
        raise KeyError(f"unknown store operation {op!r}")

    def close(self) -> None:
        super().close()
        with self._cond:
            self._data.clear()
            self._cond.notify_all()


class StoreClient:
    """One authenticated connection to a :class:`StoreServer`, shared by threads (a lock
    serialises requests; blocking calls wait in short slices so they never hold it long)."""

    def __init__(self, host: str, port: int, security: Security, timeout: float):
        self.host, self.port, self.timeout = host, port, timeout
        self._security = security
        self._lock = threading.Lock()
        try:
            sock = open_connection(host, port, security, timeout)
        except (OSError, AuthenticationError) as error:
            raise RendezvousError(f"Could not connect to the rendezvous store at {host}:{port} "
                                  f"({error})") from error
        self._sock: Optional[socket.socket] = sock

    def _call(self, header: dict, value: bytes = b"") -> Tuple[dict, bytes]:
        with self._lock:
            if self._sock is None:
                raise RendezvousError("The store connection is closed")
            try:
                send_frame(self._sock, *_message(header, value))
                frame = recv_frame(self._sock, self._security.max_frame_bytes)
            except (OSError, FrameError) as error:
                self._close_locked()
                raise RendezvousError(f"The rendezvous store at {self.host}:{self.port} is gone "
                                 f"({error!r})") from error
            if frame is None:
                self._close_locked()
                raise RendezvousError(f"The rendezvous store at {self.host}:{self.port} closed "
                                 f"the connection")
        reply, data = _split(frame)
        return reply, bytes(data)

    # ------------------------------------------------------------------ operations
    def set(self, key: str, value: Value) -> None:
        self._call({"op": "set", "key": key}, _as_bytes(value))

    def try_get(self, key: str, wait: float = 0.0) -> Optional[bytes]:
        """The value, or None if the key does not exist (after waiting up to ``wait``)."""
        deadline = time.monotonic() + wait
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            reply, data = self._call({"op": "get", "key": key, "wait": remaining})
            if reply.get("found"):
                return data
            if remaining <= 0:
                return None

    def get(self, key: str, timeout: Optional[float] = None) -> bytes:
        """The value of ``key``, waiting up to ``timeout`` (default: the client's) for it."""
        wait = self.timeout if timeout is None else timeout
        value = self.try_get(key, wait)
        if value is None:
            raise TimeoutError(f"Timed out after {wait:.0f} s waiting for key {key!r} in the "
                               f"rendezvous store")
        return value

    def add(self, key: str, amount: int) -> int:
        return int(self._call({"op": "add", "key": key, "amount": int(amount)})[0]["value"])

    def check(self, keys: Sequence[str]) -> bool:
        return bool(self._call({"op": "check", "keys": list(keys)})[0]["value"])

    def wait(self, keys: Sequence[str], timeout: Optional[float] = None) -> None:
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if self._call({"op": "check", "keys": list(keys), "wait": remaining})[0]["value"]:
                return
            if remaining <= 0:
                raise TimeoutError(f"Timed out after {wait:.0f} s waiting for keys "
                                   f"{list(keys)} in the rendezvous store")

    def compare_set(self, key: str, expected: Value, desired: Value) -> bytes:
        return self._call({"op": "compare_set", "key": key,
                           "expected": _as_bytes(expected).decode("latin-1")},
                          _as_bytes(desired))[1]

    def delete(self, key: str) -> bool:
        return bool(self._call({"op": "delete", "key": key})[0]["value"])

    def num_keys(self) -> int:
        return int(self._call({"op": "num_keys"})[0]["value"])

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


_torch_store_class = None


def torch_store(client: StoreClient, prefix: str = ""):
    """A ``torch.distributed.Store`` over ``client`` (keys under ``prefix``), for
    ``init_process_group(store=...)``: gloo's rendezvous then authenticates like everything
    else. The class is built on first use, so this module does not import torch."""
    global _torch_store_class
    if _torch_store_class is None:
        _torch_store_class = _make_torch_store_class()
    return _torch_store_class(client, prefix)


def _make_torch_store_class():
    import datetime

    import torch.distributed as dist

    class _TorchStore(dist.Store):
        def __init__(self, client: StoreClient, prefix: str):
            super().__init__()
            self._client, self._prefix = client, prefix
            self._timeout = client.timeout

        def _k(self, key: str) -> str:
            return self._prefix + key

        def set(self, key, value):
            self._client.set(self._k(key), value)

        def get(self, key):
            return self._client.get(self._k(key), self._timeout)

        def add(self, key, value):
            return self._client.add(self._k(key), value)

        def check(self, keys):
            return self._client.check([self._k(k) for k in keys])

        def wait(self, keys, timeout=None):
            seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) \
                else self._timeout
            self._client.wait([self._k(k) for k in keys], seconds)

        def compare_set(self, key, expected, desired):
            return self._client.compare_set(self._k(key), expected, desired)

        def delete_key(self, key):
            return self._client.delete(self._k(key))

        def num_keys(self):
            return self._client.num_keys()

        def set_timeout(self, timeout):
            self._timeout = timeout.total_seconds() if isinstance(
                timeout, datetime.timedelta) else float(timeout)

    return _TorchStore
