"""Authenticated, framed TCP connections: what every socket of the library speaks.

- **Handshake.** Each side proves it holds the run's secret (at least 32 random bytes the
  client creates and ships inside the Flink job) by an HMAC-SHA256 challenge-response over
  fresh nonces, compared with ``hmac.compare_digest``; the server proves it too, so a worker
  never talks to an impostor. The whole handshake (TLS included) has one absolute deadline
  (``HANDSHAKE_TIMEOUT``): a peer that has not finished by then is closed, however slowly it
  drips bytes; nothing it sent is interpreted.
- **TLS** (optional): the server presents a PEM certificate and key; a client trusts exactly
  that certificate, by its SHA-256 fingerprint (pinned, compared with ``compare_digest``), so
  self-signed and CA-issued leaves work alike and no other certificate of the same CA passes.
  The HMAC proofs cover the fingerprint: a relay that terminates TLS with another certificate
  cannot pass a handshake it forwards. Key material is handed to OpenSSL through an in-memory
  file where the system has one, and never stays on disk.
- **Frames.** An 8-byte little-endian length, then the payload. A length above the
  configured maximum, a truncated frame, a closed stream or (on servers) a frame that stalls
  raise :class:`FrameError`, so memory and threads stay bounded and the caller closes that one
  connection.
- **Servers** (:class:`AuthenticatedServer`) never stop accepting: a failed ``accept`` (out of
  descriptors, buffers or memory) or thread start backs off and goes on; at most ``pending``
  connections may be in their handshake at once, and beyond that the oldest is closed (a
  legitimate client finishes in milliseconds, a stranger holding a slot is the first to go).

Free of Flink and torch imports.
"""

import errno
import functools
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
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

from ..errors import AuthenticationError, FrameError

__all__ = ["Security", "AuthenticatedServer", "new_secret", "serve_handshake",
           "client_handshake", "open_connection", "send_frame", "recv_frame", "recv_exactly",
           "log_rejected", "certificate_fingerprint", "DEFAULT_MAX_FRAME_BYTES",
           "HANDSHAKE_TIMEOUT", "MAX_PENDING_HANDSHAKES"]

log = logging.getLogger("flink_torch_ml")

MAGIC = b"FTM2"
NONCE_BYTES = 32
SECRET_BYTES = 32
DEFAULT_MAX_FRAME_BYTES = 1 << 30
#: seconds a peer has, in all, to complete the handshake (TLS and HMAC) before it is dropped
HANDSHAKE_TIMEOUT = 10.0
#: connections a server lets be in their handshake at once
MAX_PENDING_HANDSHAKES = 256
#: a frame that has begun must go on arriving: this many seconds, plus one per MiB
FRAME_STALL_SECONDS = 30.0
_LENGTH = struct.Struct("<Q")
#: accept() errors that mean "out of a resource for now": back off and go on
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def new_secret() -> bytes:
    """A fresh per-run secret."""
    return secrets.token_bytes(SECRET_BYTES)


def certificate_fingerprint(pem: bytes) -> bytes:
    """SHA-256 of the DER encoding of the first certificate in a PEM (the leaf)."""
    text = pem.decode("ascii", "replace")
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = text.find(begin)
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError("the TLS certificate is not a PEM certificate")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[start:stop + len(end)])).digest()


@dataclass(frozen=True)
class Security:
    """What both ends of a connection need: the run's secret, the frame limit, and optionally
    a PEM certificate (the leaf first; a chain may follow) and key, their contents, so they
    travel inside the job, for TLS."""

    secret: bytes
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    tls_certificate: Optional[bytes] = None
    tls_key: Optional[bytes] = field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.secret, bytes) or len(self.secret) < SECRET_BYTES:
            raise ValueError(f"the run's secret must be at least {SECRET_BYTES} bytes")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tls_certificate is not None:
            certificate_fingerprint(self.tls_certificate)  # refuse a file that is no PEM

    def __repr__(self):  # never print the secret
        return (f"Security(max_frame_bytes={self.max_frame_bytes}, "
                f"tls={self.tls_certificate is not None})")

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    @functools.cached_property
    def fingerprint(self) -> bytes:
        """The pinned certificate's SHA-256 (b"" without TLS): what the MACs cover."""
        certificate = self.tls_certificate  # set exactly when self.tls
        return certificate_fingerprint(certificate) if certificate is not None else b""


class _Deadline:
    """An absolute deadline: each blocking call on a socket gets only the time left."""

    def __init__(self, seconds: float, what: str):
        self.at, self.seconds, self.what = time.monotonic() + seconds, seconds, what

    def arm(self, sock: socket.socket) -> None:
        left = self.at - time.monotonic()
        if left <= 0:
            raise AuthenticationError(f"the {self.what} took longer than {self.seconds:.0f} s")
        sock.settimeout(left)


# ---------------------------------------------------------------------- TLS
_context_cache: "OrderedDict[str, Tuple[ssl.SSLContext, ssl.SSLContext]]" = OrderedDict()
_context_lock = threading.Lock()
_CONTEXTS_KEPT = 8


def _contexts(security: Security) -> Tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client TLS contexts for a certificate (a few kept, newest last). The
    client verifies nothing itself: the certificate is pinned after the handshake."""
    certificate, tls_key = security.tls_certificate, security.tls_key
    assert certificate is not None and tls_key is not None  # callers check security.tls
    key = hashlib.sha256(certificate + tls_key).hexdigest()
    with _context_lock:
        if key in _context_cache:
            _context_cache.move_to_end(key)
            return _context_cache[key]
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            _load_cert_chain(server, certificate, tls_key)
        except ssl.SSLError as error:
            raise ValueError(f"The TLS certificate and key cannot be used together (is the "
                             f"key the certificate's?): {error}") from None
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.minimum_version = ssl.TLSVersion.TLSv1_2
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE  # pinned by fingerprint instead, see _pin
        _context_cache[key] = (server, client)
        if len(_context_cache) > _CONTEXTS_KEPT:
            _context_cache.popitem(last=False)
        return server, client


def _load_cert_chain(context: ssl.SSLContext, certificate: bytes, key: bytes) -> None:
    """OpenSSL reads a certificate and key from files only: give it in-memory files (Linux
    memfd), else private temporary files removed at once, whatever happens."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fds = []
        try:
            for data in (certificate, key):
                fd = os.memfd_create("ftm-tls", os.MFD_CLOEXEC)
                fds.append(fd)
                os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
            return
        finally:
            for fd in fds:
                os.close(fd)
    folder = tempfile.mkdtemp(prefix="ftm-tls-")
    paths = [os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")]
    try:
        for path, data in zip(paths, (certificate, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        context.load_cert_chain(*paths)
    finally:
        for path in paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        os.rmdir(folder)


def _tls_handshake(sock: ssl.SSLSocket, deadline: _Deadline) -> None:
    deadline.arm(sock)
    try:
        sock.do_handshake()  # CPython bounds the whole call by the socket's timeout
    except socket.timeout:
        raise AuthenticationError(f"the TLS handshake took longer than "
                                  f"{deadline.seconds:.0f} s") from None
    except ssl.SSLEOFError:
        raise ConnectionResetError("the peer closed the connection during the TLS "
                                   "handshake") from None
    except ssl.SSLError as error:
        raise AuthenticationError(f"the TLS handshake failed: {error}") from None


def _pin(sock: ssl.SSLSocket, security: Security) -> bytes:
    """The server's certificate must be exactly the pinned one; returns its fingerprint."""
    der = sock.getpeercert(binary_form=True)
    seen = hashlib.sha256(der).digest() if der else b""
    if not hmac.compare_digest(seen, security.fingerprint):
        raise AuthenticationError("the server's TLS certificate is not the run's certificate "
                                  "(its SHA-256 fingerprint differs)")
    return seen


# ---------------------------------------------------------------------- HMAC handshake
def _mac(secret: bytes, role: bytes, first: bytes, second: bytes, binding: bytes) -> bytes:
    return hmac.new(secret, MAGIC + role + first + second + binding, hashlib.sha256).digest()


def serve_handshake(sock: socket.socket, security: Security,
                    timeout: float = HANDSHAKE_TIMEOUT, binding: Optional[bytes] = None,
                    deadline: Optional[_Deadline] = None) -> None:
    """Server side: challenge the peer; raise AuthenticationError if it fails or does not
    finish within ``timeout`` seconds in all. The socket is blocking afterwards.
    ``binding``: the TLS certificate's fingerprint the proofs cover (b"" without TLS)."""
    deadline = deadline or _Deadline(timeout, "handshake")
    binding = security.fingerprint if binding is None else binding
    server_nonce = secrets.token_bytes(NONCE_BYTES)
    deadline.arm(sock)
    sock.sendall(MAGIC + server_nonce)
    reply = _recv_before(sock, len(MAGIC) + NONCE_BYTES + 32, deadline)
    if reply is None or reply[:len(MAGIC)] != MAGIC:
        raise AuthenticationError("the peer does not speak this protocol")
    client_nonce = bytes(reply[len(MAGIC):len(MAGIC) + NONCE_BYTES])
    proof = bytes(reply[len(MAGIC) + NONCE_BYTES:])
    if not hmac.compare_digest(proof, _mac(security.secret, b"C", server_nonce, client_nonce,
                                           binding)):
        raise AuthenticationError("the peer does not hold the run's secret")
    deadline.arm(sock)
    sock.sendall(_mac(security.secret, b"S", client_nonce, server_nonce, binding))
    sock.settimeout(None)


def client_handshake(sock: socket.socket, security: Security,
                     timeout: float = HANDSHAKE_TIMEOUT, binding: Optional[bytes] = None,
                     deadline: Optional[_Deadline] = None) -> None:
    """Client side: answer the server's challenge and check its own proof, within
    ``timeout`` seconds in all."""
    deadline = deadline or _Deadline(timeout, "handshake")
    binding = security.fingerprint if binding is None else binding
    hello = _recv_before(sock, len(MAGIC) + NONCE_BYTES, deadline)
    if hello is None:
        raise ConnectionResetError("the server closed the connection before its challenge")
    if hello[:len(MAGIC)] != MAGIC:
        raise AuthenticationError("the server does not speak this protocol")
    server_nonce = bytes(hello[len(MAGIC):])
    client_nonce = secrets.token_bytes(NONCE_BYTES)
    deadline.arm(sock)
    sock.sendall(MAGIC + client_nonce + _mac(security.secret, b"C", server_nonce, client_nonce,
                                             binding))
    proof = _recv_before(sock, 32, deadline)
    if proof is None or not hmac.compare_digest(
            bytes(proof), _mac(security.secret, b"S", client_nonce, server_nonce, binding)):
        raise AuthenticationError("the server does not hold the run's secret")
    sock.settimeout(None)


def _recv_before(sock: socket.socket, size: int, deadline: _Deadline) -> Optional[memoryview]:
    """``size`` bytes, every wait bounded by what is left of ``deadline``."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        deadline.arm(sock)
        try:
            n = sock.recv_into(view[got:], size - got)
        except socket.timeout:
            raise AuthenticationError(f"the {deadline.what} took longer than "
                                      f"{deadline.seconds:.0f} s") from None
        if n == 0:
            if got == 0:
                return None
            raise AuthenticationError(f"the connection closed after {got} of {size} bytes of "
                                      f"the {deadline.what}")
        got += n
    return view


def accept_handshake(raw: socket.socket, security: Security,
                     timeout: float = HANDSHAKE_TIMEOUT,
                     on_wrapped: Optional[Callable[[socket.socket], None]] = None
                     ) -> socket.socket:
    """A server's whole handshake on an accepted socket (TLS if configured, then HMAC) under
    one deadline; returns the socket to talk on (blocking). ``on_wrapped`` learns the TLS
    socket as soon as it exists (the raw one is then detached)."""
    deadline = _Deadline(timeout, "handshake")
    sock = raw
    if security.tls:
        sock = _contexts(security)[0].wrap_socket(raw, server_side=True,
                                                  do_handshake_on_connect=False)
        if on_wrapped is not None:
            on_wrapped(sock)
        _tls_handshake(sock, deadline)
    serve_handshake(sock, security, deadline=deadline)
    return sock


def open_connection(host: str, port: int, security: Security, timeout: float,
                    handshake_timeout: float = HANDSHAKE_TIMEOUT) -> socket.socket:
    """An authenticated connection to a server of the library's (TLS if configured, the
    server's certificate pinned, then HMAC), its socket timeout ``timeout`` afterwards. A
    server that closes before its challenge (busy: at its limit of handshakes) is dialled
    again until ``timeout``; a failed proof is final."""
    give_up = time.monotonic() + timeout
    pause = 0.05
    while True:
        sock = socket.create_connection((host, port), timeout=max(0.1, min(
            timeout, give_up - time.monotonic())))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            deadline = _Deadline(min(timeout, handshake_timeout), "handshake")
            if security.tls:
                sock = _contexts(security)[1].wrap_socket(sock, do_handshake_on_connect=False)
                _tls_handshake(sock, deadline)
                _pin(sock, security)
            client_handshake(sock, security, deadline=deadline)
            sock.settimeout(timeout)
            return sock
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            sock.close()  # closed before it challenged us: at its handshake limit, retry
            if time.monotonic() + pause >= give_up:
                raise
            time.sleep(pause)
            pause = min(1.0, pause * 2)
        except BaseException:
            sock.close()
            raise


# ---------------------------------------------------------------------- frames
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


_SMALL_FRAME = 64 * 1024


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


def recv_frame(sock: socket.socket, max_bytes: int,
               stall: Optional[float] = None) -> Optional[memoryview]:
    """The next frame's payload; None at a clean end of stream between frames. With
    ``stall`` (servers), a frame whose first byte arrived must be complete within ``stall``
    seconds plus one per MiB, or FrameError ends the connection; waiting *between* frames
    stays unbounded (an idle peer is no stalled one)."""
    if stall is None:
        header = recv_exactly(sock, _LENGTH.size)
        if header is None:
            return None
        size = _frame_size(header, max_bytes)
        payload = recv_exactly(sock, size)
    else:
        first = sock.recv(1)  # blocking: idle between frames is fine
        if not first:
            return None
        previous = sock.gettimeout()
        deadline = time.monotonic() + stall
        try:
            rest = _recv_until(sock, _LENGTH.size - 1, deadline)
            size = _frame_size(first + bytes(rest), max_bytes)
            payload = _recv_until(sock, size, deadline + size / (1 << 20))
        finally:
            try:
                sock.settimeout(previous)
            except OSError:
                pass
    if payload is None and size:
        raise FrameError("the connection closed before a frame's payload")
    return payload if payload is not None else memoryview(b"")


def _frame_size(header, max_bytes: int) -> int:
    (size,) = _LENGTH.unpack(bytes(header))
    if size > max_bytes:
        raise FrameError(f"a frame of {size} bytes exceeds the limit of {max_bytes} bytes "
                         f"(flink_torch_ml.max-frame-bytes)")
    return size


def _recv_until(sock: socket.socket, size: int, deadline: float) -> memoryview:
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FrameError(f"a frame stalled after {got} of {size} bytes")
        sock.settimeout(left)
        try:
            n = sock.recv_into(view[got:], size - got)
        except socket.timeout:
            raise FrameError(f"a frame stalled after {got} of {size} bytes") from None
        if n == 0:
            raise FrameError(f"the connection closed after {got} of {size} bytes")
        got += n
    return view


# ---------------------------------------------------------------------- servers
class AuthenticatedServer:
    """A TCP server every connection of which must first pass the handshake: an accept
    thread and a thread per connection. A subclass's ``serve(conn, peer)`` handles an
    authenticated connection; a stranger is closed, counted in ``rejected`` and logged once.
    The accept loop outlives every error; at most ``pending`` handshakes run at once (the
    oldest is closed, counted in ``shed``, beyond that), each within ``handshake_timeout``
    seconds in all; a frame that stalls ``frame_stall`` seconds ends its connection.
    Subclasses set up their own state before calling ``__init__`` (it starts accepting)."""

    def __init__(self, bind: str, security: Security, what: str,
                 pending: int = MAX_PENDING_HANDSHAKES,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 frame_stall: float = FRAME_STALL_SECONDS):
        self._security = security
        self._what = what
        self.handshake_timeout, self.frame_stall = handshake_timeout, frame_stall
        if security.tls:
            _contexts(security)  # a certificate and key that do not fit fail here, not later
        self._sock = socket.create_server((bind, 0), backlog=min(socket.SOMAXCONN, 1024))
        self.port = self._sock.getsockname()[1]
        self._connections_lock = threading.Lock()
        self._connections: List[socket.socket] = []
        self._handshaking: "OrderedDict[int, socket.socket]" = OrderedDict()
        self._max_pending = max(1, min(pending, _descriptor_share()))
        self._reserve = _reserve_descriptor()
        self._noted: set = set()
        self.closed = False
        self.rejected = 0  # connections closed for failing the handshake or the protocol
        self.shed = 0  # connections closed unread: too many handshakes, or no resources
        threading.Thread(target=self._accept, daemon=True, name=f"ftm-{what}-accept").start()

    def serve(self, conn: socket.socket, peer) -> None:
        raise NotImplementedError

    def reject(self, peer, error: BaseException) -> None:
        with self._connections_lock:
            self.rejected += 1
        if not self.closed:
            log_rejected(self._what, peer, error)

    # ------------------------------------------------------------------ accepting
    def _accept(self) -> None:
        pause = 0.0
        while not self.closed:
            try:
                conn, peer = self._sock.accept()
            except OSError as error:
                if self.closed:
                    return
                pause = min(1.0, max(0.01, pause * 2))
                if error.errno in _RESOURCE_ERRNOS:
                    self._note("resources", f"accept failed ({error}); backing off")
                    self._shed_one()
                time.sleep(pause)
                continue
            except Exception as error:  # noqa: BLE001 - the loop must never end
                self._note("accept", f"accept failed ({error!r}); going on")
                time.sleep(0.1)
                continue
            pause = 0.0
            self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer) -> None:
        evicted = None
        with self._connections_lock:
            if self.closed:
                conn.close()
                return
            self._connections.append(conn)
            self._handshaking[id(conn)] = conn
            if len(self._handshaking) > self._max_pending:
                _, evicted = self._handshaking.popitem(last=False)
                self.shed += 1
        if evicted is not None:
            self._note("pending", f"more than {self._max_pending} connections in their "
                                  f"handshake at once; closing the oldest")
            _shutdown(evicted, close=False)  # its own thread closes it
        try:
            threading.Thread(target=self._run, args=(conn, peer), daemon=True,
                             name=f"ftm-{self._what}-conn").start()
        except RuntimeError as error:  # can't start new thread (a pids or memory limit)
            with self._connections_lock:
                self.shed += 1
            self._note("threads", f"cannot start a thread ({error}); closing a connection")
            self._drop(conn)
            time.sleep(0.05)

    def _shed_one(self) -> None:
        """Out of descriptors: use the reserve one to accept and close a connection, so the
        backlog drains instead of spinning, then take the reserve back."""
        if self._reserve is None:
            return
        os.close(self._reserve)
        self._reserve = None
        try:
            self._sock.settimeout(0)
            conn, _ = self._sock.accept()
            conn.close()
            with self._connections_lock:
                self.shed += 1
        except OSError:
            pass
        finally:
            self._sock.settimeout(None)
            self._reserve = _reserve_descriptor()

    def _note(self, kind: str, message: str) -> None:
        """Log a kind of trouble once per server."""
        if kind not in self._noted and not self.closed:
            self._noted.add(kind)
            log.warning("flink-torch-ml: %s: %s", self._what, message)

    # ------------------------------------------------------------------ one connection
    def _run(self, conn: socket.socket, peer) -> None:
        sock = conn
        try:
            # replies are small writes the peer waits for: without this, Nagle holds the
            # second one back until the peer's delayed ACK (40 ms a request)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def wrapped(tls: socket.socket) -> None:
                nonlocal sock
                sock = tls
                self._replace(conn, tls)

            sock = accept_handshake(conn, self._security, self.handshake_timeout, wrapped)
        except Exception as error:  # noqa: BLE001 - a stranger: close it, whatever it did
            self.reject(peer, error)
            self._drop(sock)
            return
        finally:
            with self._connections_lock:
                self._handshaking.pop(id(conn), None)
        try:
            self.serve(sock, peer)
        except Exception as error:  # noqa: BLE001 - close this connection, never the server
            self.reject(peer, error)
        finally:
            self._drop(sock)

    def _replace(self, old: socket.socket, new: socket.socket) -> None:
        with self._connections_lock:
            self._connections = [new if c is old else c for c in self._connections]
            if id(old) in self._handshaking:
                self._handshaking[id(old)] = new

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
            self._handshaking.clear()
        for sock in sockets:
            _shutdown(sock)
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None


def _shutdown(sock: socket.socket, close: bool = True) -> None:
    """Wake any thread blocked on ``sock`` (it sees the end of the stream); close it too,
    unless the thread that owns it will (so its descriptor is not reused under it)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError):
        pass
    if close:
        try:
            sock.close()
        except OSError:
            pass


def _reserve_descriptor() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _descriptor_share() -> int:
    """A quarter of this process's descriptor limit: what handshakes may hold at most."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return max(16, soft // 4) if soft > 0 else MAX_PENDING_HANDSHAKES
    except (ImportError, OSError, ValueError):
        return MAX_PENDING_HANDSHAKES


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
