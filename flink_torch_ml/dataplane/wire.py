"""Authenticated, framed TCP connections: what every socket of the library speaks.

- **Handshake.** Each side proves it holds the run's secret (at least 32 random bytes the
  client creates and ships inside the Flink job) by an HMAC-SHA256 challenge-response over
  fresh nonces, compared with ``hmac.compare_digest``; the server proves it too, so a worker
  never talks to an impostor. A peer that fails (or stalls past the handshake timeout) is
  closed; nothing it sent is interpreted.
- **Frames.** An 8-byte little-endian length, then the payload. A length above the
  configured maximum, a truncated frame or a closed stream raise :class:`FrameError`, so
  memory stays bounded and the caller closes that one connection.
- **TLS** (optional): both ends wrap the socket with ``ssl`` from a PEM certificate and key.

Free of Flink and torch imports.
"""

import hashlib
import hmac
import logging
import os
import secrets
import socket
import ssl
import struct
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import AuthenticationError, FrameError

__all__ = ["Security", "AuthenticatedServer", "new_secret", "serve_handshake",
           "client_handshake", "send_frame", "recv_frame", "recv_exactly", "log_rejected",
           "DEFAULT_MAX_FRAME_BYTES", "HANDSHAKE_TIMEOUT"]

log = logging.getLogger("flink_torch_ml")

MAGIC = b"FTM1"
NONCE_BYTES = 32
SECRET_BYTES = 32
DEFAULT_MAX_FRAME_BYTES = 1 << 30
#: seconds a peer has to complete the handshake before it is dropped
HANDSHAKE_TIMEOUT = 10.0
_LENGTH = struct.Struct("<Q")


def new_secret() -> bytes:
    """A fresh per-run secret."""
    return secrets.token_bytes(SECRET_BYTES)


@dataclass(frozen=True)
class Security:
    """What both ends of a connection need: the run's secret, the frame limit, and optionally
    a PEM certificate and key (their contents, so they travel inside the job) for TLS."""

    secret: bytes
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    tls_certificate: Optional[bytes] = None
    tls_key: Optional[bytes] = None

    def __post_init__(self):
        if not isinstance(self.secret, bytes) or len(self.secret) < SECRET_BYTES:
            raise ValueError(f"the run's secret must be at least {SECRET_BYTES} bytes")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")

    def __repr__(self):  # never print the secret
        return (f"Security(max_frame_bytes={self.max_frame_bytes}, "
                f"tls={self.tls_certificate is not None})")

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    def wrap_server(self, sock: socket.socket) -> socket.socket:
        return _contexts(self)[0].wrap_socket(sock, server_side=True) if self.tls else sock

    def wrap_client(self, sock: socket.socket) -> socket.socket:
        return _contexts(self)[1].wrap_socket(sock) if self.tls else sock


_context_cache = {}
_context_lock = threading.Lock()


def _contexts(security: Security) -> Tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client TLS contexts for a certificate; the client trusts exactly that
    certificate (host names are not checked: peers are addressed by IP, and the HMAC
    handshake is what authenticates them)."""
    key = hashlib.sha256(security.tls_certificate + security.tls_key).hexdigest()
    with _context_lock:
        if key not in _context_cache:
            folder = tempfile.mkdtemp(prefix="ftm-tls-")
            cert_path, key_path = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
            for path, data in ((cert_path, security.tls_certificate),
                               (key_path, security.tls_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
            server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            server.load_cert_chain(cert_path, key_path)
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False
            client.load_verify_locations(cafile=cert_path)
            for path in (cert_path, key_path):
                os.unlink(path)
            os.rmdir(folder)
            _context_cache[key] = (server, client)
        return _context_cache[key]


def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, MAGIC + role + first + second, hashlib.sha256).digest()


def serve_handshake(sock: socket.socket, security: Security,
                    timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Server side: challenge the peer; raise AuthenticationError if it fails. The socket's
    timeout is ``timeout`` during the handshake and blocking afterwards."""
    sock.settimeout(timeout)
    server_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(MAGIC + server_nonce)
    reply = recv_exactly(sock, len(MAGIC) + NONCE_BYTES + 32)
    if reply is None or reply[:len(MAGIC)] != MAGIC:
        raise AuthenticationError("the peer does not speak this protocol")
    client_nonce = bytes(reply[len(MAGIC):len(MAGIC) + NONCE_BYTES])
    proof = bytes(reply[len(MAGIC) + NONCE_BYTES:])
    if not hmac.compare_digest(proof, _mac(security.secret, b"C", server_nonce, client_nonce)):
        raise AuthenticationError("the peer does not hold the run's secret")
    sock.sendall(_mac(security.secret, b"S", client_nonce, server_nonce))
    sock.settimeout(None)


def client_handshake(sock: socket.socket, security: Security,
                     timeout: float = HANDSHAKE_TIMEOUT) -> None:
    """Client side: answer the server's challenge and check its own proof."""
    sock.settimeout(timeout)
    hello = recv_exactly(sock, len(MAGIC) + NONCE_BYTES)
    if hello is None or hello[:len(MAGIC)] != MAGIC:
        raise AuthenticationError("the server does not speak this protocol")
    server_nonce = bytes(hello[len(MAGIC):])
    client_nonce = secrets.token_bytes(NONCE_BYTES)
    sock.sendall(MAGIC + client_nonce + _mac(security.secret, b"C", server_nonce, client_nonce))
    proof = recv_exactly(sock, 32)
    if proof is None or not hmac.compare_digest(
            bytes(proof), _mac(security.secret, b"S", client_nonce, server_nonce)):
        raise AuthenticationError("the server does not hold the run's secret")
    sock.settimeout(None)


_SMALL_FRAME = 64 * 1024


def recv_exactly(sock: socket.socket, size: int) -> Optional[memoryview]:
    """``size`` bytes from ``sock``; None at a clean end of stream before the first byte;
    FrameError if the stream ends inside them."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            if got == 0:
                return None
            raise FrameError(f"the connection closed after {got} of {size} bytes")
        got += n
    return view


def send_frame(sock: socket.socket, *parts) -> None:
    """One frame made of ``parts`` (bytes-like): a small frame in one write, a large one
    without joining (copying) its parts first."""
    size = sum(memoryview(p).nbytes for p in parts)
    if size <= _SMALL_FRAME:
        sock.sendall(b"".join([_LENGTH.pack(size), *parts]))
        return
    sock.sendall(_LENGTH.pack(size))
    for part in parts:
        sock.sendall(part)


def recv_frame(sock: socket.socket, max_bytes: int) -> Optional[memoryview]:
    """The next frame's payload; None at a clean end of stream between frames."""
    header = recv_exactly(sock, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size > max_bytes:
        raise FrameError(f"a frame of {size} bytes exceeds the limit of {max_bytes} bytes "
                         f"(flink_torch_ml.max-frame-bytes)")
    payload = recv_exactly(sock, size)
    if payload is None and size:
        raise FrameError("the connection closed before a frame's payload")
    return payload if payload is not None else memoryview(b"")


class AuthenticatedServer:
    """A TCP server every connection of which must first pass the handshake: an accept
    thread and a thread per connection. A subclass's ``serve(conn, peer)`` handles an
    authenticated connection; a stranger is closed, counted in ``rejected`` and logged once.
    Subclasses set up their own state before calling ``__init__`` (it starts accepting)."""

    def __init__(self, bind: str, security: Security, what: str):
        self._security = security
        self._what = what
        self._sock = socket.create_server((bind, 0))
        self.port = self._sock.getsockname()[1]
        self._connections_lock = threading.Lock()
        self._connections: list = []
        self.closed = False
        self.rejected = 0  # connections closed for failing the handshake or the protocol
        threading.Thread(target=self._accept, daemon=True, name=f"ftm-{what}-accept").start()

    def serve(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError

    def reject(self, peer, error: BaseException) -> None:
        with self._connections_lock:
            self.rejected += 1
        if not self.closed:
            log_rejected(self._what, peer, error)

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                return
            with self._connections_lock:
                if self.closed:
                    conn.close()
                    return
                self._connections.append(conn)
            threading.Thread(target=self._run, args=(conn, peer), daemon=True,
                             name=f"ftm-{self._what}-conn").start()

    def _run(self, conn: socket.socket, peer) -> None:
        try:
            # replies are small writes the peer waits for: without this, Nagle holds the
            # second one back until the peer's delayed ACK (40 ms a request)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(HANDSHAKE_TIMEOUT)
            conn = self._security.wrap_server(conn)
            serve_handshake(conn, self._security)
        except (OSError, AuthenticationError, FrameError, ValueError) as error:
            self.reject(peer, error)
            self._drop(conn)
            return
        try:
            self.serve(conn, peer)
        finally:
            self._drop(conn)

    def _drop(self, conn: socket.socket) -> None:
        with self._connections_lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            conn.close()
        except OSError:
            pass

    def close(self) -> None:
        """Stop accepting and close every connection (threads blocked in them wake up)."""
        with self._connections_lock:
            self.closed = True
            sockets, self._connections = [self._sock] + self._connections, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


#: (server, peer host) pairs already logged, newest last; bounded, so a stranger with many
#: addresses cannot grow it
_rejected: "OrderedDict[Tuple[str, str], None]" = OrderedDict()
_rejected_lock = threading.Lock()
_REJECTED_REMEMBERED = 1024


def log_rejected(what: str, peer, error: BaseException) -> None:
    """Log a rejected connection once per (server, peer host) among the last 1,024."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    with _rejected_lock:
        if (what, host) in _rejected:
            _rejected.move_to_end((what, host))
            return
        _rejected[(what, host)] = None
        if len(_rejected) > _REJECTED_REMEMBERED:
            _rejected.popitem(last=False)
    log.warning("flink-torch-ml: closed a connection from %s to %s: %s", host, what, error)
