"""The run's authenticated rendezvous store (store.py) over real sockets: operations,
strangers, fuzzed requests, and gloo process groups rendezvousing through it."""

import datetime
import multiprocessing
import pickle
import socket
import struct
import time

import pytest

from flink_torch_ml import RendezvousError
from flink_torch_ml.dataplane.store import StoreClient, StoreServer, torch_store
from flink_torch_ml.dataplane.wire import Security, client_handshake, new_secret, send_frame

SECURITY = Security(new_secret(), max_frame_bytes=1 << 20)


@pytest.fixture
def server():
    server = StoreServer("127.0.0.1", SECURITY)
    yield server
    server.close()


def client(server, security=SECURITY, timeout=2.0):
    return StoreClient("127.0.0.1", server.port, security, timeout)


def test_operations(server):
    c = client(server)
    c.set("a", b"\x00\x01binary")
    assert c.get("a") == b"\x00\x01binary"
    assert c.try_get("missing") is None
    assert c.add("n", 2) == 2 and c.add("n", 3) == 5
    assert c.check(["a", "n"]) and not c.check(["a", "zz"])
    assert c.compare_set("first", "", "rank 1") == b"rank 1"
    assert c.compare_set("first", "", "rank 0") == b"rank 1"  # the first one wins
    assert c.delete("a") and not c.check(["a"])
    with pytest.raises(TimeoutError, match="'never'"):
        c.get("never", timeout=0.3)


def test_a_blocking_get_sees_a_value_set_later_by_another_client(server):
    import threading

    waiter, setter = client(server), client(server)
    threading.Timer(0.3, lambda: setter.set("late", "v")).start()
    started = time.monotonic()
    assert waiter.get("late", timeout=5) == b"v"
    assert time.monotonic() - started < 3


def test_wrong_secret_is_refused_and_the_server_keeps_serving(server):
    good = client(server)
    with pytest.raises(RendezvousError, match="Could not connect"):
        client(server, Security(new_secret()))
    good.set("still", "here")
    assert client(server).get("still") == b"here"
    assert server.rejected == 1


@pytest.mark.parametrize("attack", [
    pickle.dumps(["a pickle"]),
    struct.pack("<Q", 9) + pickle.dumps(1),
    b"\x00" * 1000,
    struct.pack("<Q", 1 << 62),
])
def test_strangers_sending_pickles_or_garbage_are_closed(server, attack):
    good = client(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as stranger:
        stranger.sendall(attack)
        stranger.settimeout(2)
        try:
            while stranger.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    good.set("k", "v")
    assert good.get("k") == b"v"


@pytest.mark.parametrize("request_bytes", [
    b"no header line",
    b"[1, 2]\n",
    b'{"op": "explode"}\n',
    b'{"op": "add", "key": "n", "amount": "x"}\n',
])
def test_a_malformed_request_closes_only_that_connection(server, request_bytes):
    good = client(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    client_handshake(sock, SECURITY, 2)
    send_frame(sock, request_bytes)
    assert sock.recv(64) == b""
    sock.close()
    good.set("k", "v")
    assert good.get("k") == b"v"


def test_an_oversized_request_is_refused(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    client_handshake(sock, SECURITY, 2)
    sock.sendall(struct.pack("<Q", (1 << 20) + 1))
    assert sock.recv(64) == b""
    sock.close()


def test_a_closed_server_is_an_error_not_a_hang(server):
    c = client(server)
    server.close()
    with pytest.raises(RendezvousError):
        c.set("a", "b")


def _gloo_rank(rank, port, secret, results):
    import torch
    import torch.distributed as dist

    c = StoreClient("127.0.0.1", port, Security(secret), 20.0)
    dist.init_process_group("gloo", store=torch_store(c, "pg/"), rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=20))
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    dist.barrier()
    results.put((rank, tensor.item()))
    dist.destroy_process_group()


def test_gloo_process_groups_rendezvous_through_the_store():
    secret = new_secret()
    server = StoreServer("127.0.0.1", Security(secret))
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_gloo_rank, args=(r, server.port, secret, results))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(60)
    server.close()
    assert [p.exitcode for p in ranks] == [0, 0]
    assert sorted(results.get(timeout=5) for _ in range(2)) == [(0, 3.0), (1, 3.0)]


def self_signed(tmp_path):
    """A PEM certificate and key made with the openssl command line."""
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=flink-torch-ml"],
                   check=True, capture_output=True)
    return cert.read_bytes(), key.read_bytes()


def test_tls_store_serves_tls_clients_and_refuses_plain_ones(tmp_path):
    cert, key = self_signed(tmp_path)
    secret = new_secret()
    tls = Security(secret, tls_certificate=cert, tls_key=key)
    server = StoreServer("127.0.0.1", tls)
    try:
        c = StoreClient("127.0.0.1", server.port, tls, 2.0)
        c.set("k", b"v" * 100_000)
        assert c.get("k") == b"v" * 100_000
        with pytest.raises(RendezvousError):  # right secret, but no TLS
            StoreClient("127.0.0.1", server.port, Security(secret), 2.0)
        (tmp_path / "other").mkdir()
        other_cert, other_key = self_signed(tmp_path / "other")
        with pytest.raises(RendezvousError):  # TLS with a certificate the client does not trust
            StoreClient("127.0.0.1", server.port,
                        Security(secret, tls_certificate=other_cert, tls_key=other_key), 2.0)
        assert c.get("k") == b"v" * 100_000  # still serving
    finally:
        server.close()
