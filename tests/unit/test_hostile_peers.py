"""The servers under attack, on loopback with real sockets and no JVM: a descriptor flood at
a soft limit of 1,024, slowloris handshakes, failing thread starts, malformed requests after
the handshake, and TLS relays. Each attack must leave the server serving a legitimate client
(with the run's secret) at once, and never end a thread with a traceback."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from flink_torch_ml import AuthenticationError, RendezvousError
from flink_torch_ml.dataplane.store import StoreClient, StoreServer
from flink_torch_ml.dataplane.wire import (Security, client_handshake, new_secret, recv_frame,
                                           send_frame, serve_handshake)

SECRET = new_secret()


def legit_round_trip(port, security=None, timeout=5.0) -> float:
    """Seconds a client with the run's secret takes to connect, set and get a key."""
    started = time.monotonic()
    client = StoreClient("127.0.0.1", port, security or Security(SECRET), timeout)
    try:
        client.set("k", b"v")
        assert client.get("k", 1.0) == b"v"
    finally:
        client.close()
    return time.monotonic() - started


@pytest.fixture
def no_thread_tracebacks():
    """Fails the test if any thread dies with an exception."""
    died = []
    previous = threading.excepthook
    threading.excepthook = lambda args: died.append(args)
    yield died
    threading.excepthook = previous
    assert [f"{a.exc_type.__name__}: {a.exc_value}" for a in died] == []


SERVER = textwrap.dedent("""
    import resource, sys, time
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    from flink_torch_ml.dataplane.store import StoreServer
    from flink_torch_ml.dataplane.wire import Security
    server = StoreServer("127.0.0.1", Security(bytes.fromhex(sys.argv[1])),
                         handshake_timeout=3.0)
    print(server.port, flush=True)
    sys.stdin.read()  # until the test closes our stdin
    print(server.shed, server.rejected, flush=True)
""")


def test_a_descriptor_flood_at_a_soft_limit_of_1024_never_stops_the_server():
    """1,100 idle connections (more than the server may open) while a legitimate client
    keeps being served; after the flood, too."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, SECRET.hex()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    strangers = []
    try:
        port = int(server.stdout.readline())
        during = []
        for i in range(1100):
            try:
                strangers.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:  # the kernel's backlog is full for a moment: the flood goes on
                time.sleep(0.01)
            if i % 275 == 274:
                during.append(legit_round_trip(port))
        during.append(legit_round_trip(port))
        assert max(during) < 3.0, during
        for sock in strangers:
            sock.close()
        strangers = []
        time.sleep(0.5)
        assert legit_round_trip(port) < 1.0
        out, _ = server.communicate("", timeout=30)
        shed, rejected = map(int, out.split())
        assert shed + rejected >= 1100 - 256  # the excess was closed, not held
    finally:
        for sock in strangers:
            sock.close()
        server.kill()
        server.wait(10)


def test_slowloris_handshakes_are_closed_at_the_deadline_while_a_client_is_served(
        no_thread_tracebacks):
    server = StoreServer("127.0.0.1", Security(SECRET), handshake_timeout=2.0)
    strangers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
    try:
        for sock in strangers:
            sock.setblocking(False)
        opened = time.monotonic()
        closed = {}
        served = None
        while len(closed) < len(strangers) and time.monotonic() - opened < 8:
            for i, sock in enumerate(strangers):
                if i in closed:
                    continue
                try:
                    sock.send(b"F")  # one byte every pass: a handshake that never ends
                    while sock.recv(4096):  # the server's challenge
                        pass
                except BlockingIOError:
                    continue
                except OSError:
                    closed[i] = time.monotonic() - opened
                    continue
                closed[i] = time.monotonic() - opened  # recv returned b"": closed
            if served is None and time.monotonic() - opened > 0.5:
                served = legit_round_trip(server.port)
            time.sleep(0.4)
        assert len(closed) == 300, f"{300 - len(closed)} slow handshakes still open"
        assert max(closed.values()) < 2.0 + 2.0  # the deadline, plus the polling
        assert served is not None and served < 1.0
        assert legit_round_trip(server.port) < 1.0
    finally:
        for sock in strangers:
            sock.close()
        server.close()


def test_a_thread_that_cannot_start_costs_one_connection_not_the_server(monkeypatch):
    server = StoreServer("127.0.0.1", Security(SECRET))
    real_start = threading.Thread.start
    failures = {"left": 5}

    def start(self):
        if self.name.startswith("ftm-") and self.name.endswith("-conn") and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("can't start new thread")
        return real_start(self)

    try:
        monkeypatch.setattr(threading.Thread, "start", start)
        strangers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        deadline = time.monotonic() + 5
        while failures["left"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert failures["left"] == 0
        assert legit_round_trip(server.port) < 1.0  # the accept loop went on
        assert server.shed >= 5
        for sock in strangers:
            sock.close()
    finally:
        monkeypatch.undo()
        server.close()


def _authenticated(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    client_handshake(sock, Security(SECRET), timeout=5)
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("header", [
    b'{"op": "get", "key": "k", "wait": NaN}',
    b'{"op": "get", "key": "k", "wait": 1e400}',
    b'{"op": "check", "keys": "not a list", "wait": 0}',
    b'{"op": "add", "key": "k", "amount": 1e30}',
    b'{"op": "get", "key": ' + b"[" * 50000 + b"]" * 50000 + b"}",
    b"[" * 100000 + b"]" * 100000,
    b'{"op": "nope"}',
    b"\xff\xfe not utf-8",
])
def test_a_malformed_request_closes_only_its_connection(header, no_thread_tracebacks):
    server = StoreServer("127.0.0.1", Security(SECRET))
    try:
        bystander = StoreClient("127.0.0.1", server.port, Security(SECRET), 5.0)
        sock = _authenticated(server.port)
        send_frame(sock, header + b"\n")
        assert recv_frame(sock, 1 << 20) is None  # closed, with no reply
        sock.close()
        bystander.set("still", b"here")  # the other connection was never touched
        assert bystander.get("still", 1.0) == b"here"
        assert legit_round_trip(server.port) < 1.0
        assert server.rejected >= 1
        bystander.close()
    finally:
        server.close()


def test_a_stalled_frame_ends_its_connection_but_an_idle_one_stays(no_thread_tracebacks):
    server = StoreServer("127.0.0.1", Security(SECRET), frame_stall=1.0)
    try:
        idle = StoreClient("127.0.0.1", server.port, Security(SECRET), 5.0)
        sock = _authenticated(server.port)
        sock.sendall((100).to_bytes(8, "little") + b'{"op"')  # 5 of 100 bytes, then nothing
        started = time.monotonic()
        assert recv_frame(sock, 1 << 20) is None
        assert time.monotonic() - started < 1.0 + 2.0
        sock.close()
        time.sleep(1.5)  # longer than the stall limit, between frames: fine
        idle.set("a", b"1")
        assert idle.get("a", 1.0) == b"1"
        idle.close()
    finally:
        server.close()


# ---------------------------------------------------------------------- TLS
def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA, two leaves it issued (a and b), and a self-signed leaf, as PEM bytes."""
    folder = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test ca", cwd=folder)
    for name in ("a", "b"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=leaf {name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", cwd=folder)
    _openssl("req", "-x509", *ec, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
             "-subj", "/CN=self", cwd=folder)
    read = lambda name: (folder / name).read_bytes()  # noqa: E731
    return {"ca": read("ca.pem"), "a": (read("a.pem"), read("a.key")),
            "a+ca": (read("a.pem") + read("ca.pem"), read("a.key")),
            "b": (read("b.pem"), read("b.key")), "self": (read("self.pem"), read("self.key"))}


@pytest.mark.parametrize("which", ["a", "a+ca", "self"])
def test_tls_works_with_a_ca_issued_leaf_alone_with_its_chain_and_self_signed(certificates,
                                                                              which):
    cert, key = certificates[which]
    security = Security(SECRET, tls_certificate=cert, tls_key=key)
    server = StoreServer("127.0.0.1", security)
    try:
        assert legit_round_trip(server.port, security) < 2.0
    finally:
        server.close()


def test_a_relay_with_another_certificate_of_the_same_ca_is_refused(certificates):
    """The relay terminates TLS with leaf b (same CA as the server's leaf a) and forwards
    the bytes: the client pins a's fingerprint and refuses; had it not, the HMAC proofs,
    which cover the fingerprint each side sees, would not match."""
    import ssl

    server_security = Security(SECRET, tls_certificate=certificates["a"][0],
                               tls_key=certificates["a"][1])
    server = StoreServer("127.0.0.1", server_security)
    relay_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    folder = os.path.dirname(__file__)
    del folder
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in (("b.pem", certificates["b"][0]), ("b.key", certificates["b"][1])):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        relay_context.load_cert_chain(os.path.join(tmp, "b.pem"), os.path.join(tmp, "b.key"))
    listener = socket.create_server(("127.0.0.1", 0))
    relayed = {"bytes": 0}

    def relay():
        raw, _ = listener.accept()
        try:
            front = relay_context.wrap_socket(raw, server_side=True)
            back = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            back.check_hostname, back.verify_mode = False, ssl.CERT_NONE
            upstream = back.wrap_socket(socket.create_connection(("127.0.0.1", server.port)))
            front.settimeout(3)
            upstream.settimeout(3)
            while True:
                data = upstream.recv(4096)
                if not data:
                    break
                front.sendall(data)
                reply = front.recv(4096)
                if not reply:
                    break
                relayed["bytes"] += len(reply)
                upstream.sendall(reply)
        except OSError:
            pass
        finally:
            raw.close()

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        with pytest.raises(RendezvousError, match="fingerprint"):
            StoreClient("127.0.0.1", listener.getsockname()[1], server_security, 3.0)
        assert relayed["bytes"] == 0  # the client sent nothing through the relay
    finally:
        thread.join(5)
        listener.close()
        server.close()


def test_the_hmac_proofs_cover_the_certificate_each_side_sees():
    """Without pinning, a relay's certificate still breaks the handshake: each side mixes
    the fingerprint it sees into its proof."""
    server_side, client_side = socket.socketpair()
    outcome = {}

    def serve():
        try:
            serve_handshake(server_side, Security(SECRET), timeout=3, binding=b"A" * 32)
            outcome["ok"] = True
        except AuthenticationError as error:
            outcome["error"] = error
            server_side.close()

    thread = threading.Thread(target=serve)
    thread.start()
    with pytest.raises(AuthenticationError):
        client_handshake(client_side, Security(SECRET), timeout=3, binding=b"B" * 32)
    thread.join(5)
    assert "error" in outcome


def test_tls_key_material_never_lands_on_disk(certificates, tmp_path, monkeypatch):
    """The key goes to OpenSSL through an in-memory file; nothing is written under TMPDIR."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    cert, key = certificates["self"]
    from flink_torch_ml.dataplane import wire

    wire._context_cache.clear()
    server = StoreServer("127.0.0.1", Security(SECRET, tls_certificate=cert, tls_key=key))
    try:
        assert legit_round_trip(server.port, Security(SECRET, tls_certificate=cert,
                                                      tls_key=key)) < 2.0
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="cannot be used together"):  # no file left either
        wire._context_cache.clear()
        StoreServer("127.0.0.1", Security(SECRET, tls_certificate=cert,
                                          tls_key=certificates["b"][1]))
    assert list(tmp_path.iterdir()) == []


def test_tls_connections_are_ended_by_close(certificates):
    cert, key = certificates["self"]
    security = Security(SECRET, tls_certificate=cert, tls_key=key)
    server = StoreServer("127.0.0.1", security)
    client = StoreClient("127.0.0.1", server.port, security, 5.0)
    client.set("x", b"1")
    assert len(server._connections) == 1 and server._connections[0].__class__.__name__ == \
        "SSLSocket"
    server.close()
    with pytest.raises(RendezvousError):
        client.get("x", 0.5)
    client.close()


def test_stranger_json_never_reaches_the_store(no_thread_tracebacks):
    """A peer without the secret that sends a well-formed request gets nothing done."""
    server = StoreServer("127.0.0.1", Security(SECRET))
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.recv(64)
        message = json.dumps({"op": "set", "key": "evil"}).encode() + b"\n"
        sock.sendall(b"FTM2" + b"\0" * 64 + (len(message)).to_bytes(8, "little") + message)
        time.sleep(0.3)
        client = StoreClient("127.0.0.1", server.port, Security(SECRET), 5.0)
        assert client.try_get("evil") is None
        client.close()
        sock.close()
    finally:
        server.close()
