"""The authenticated, framed connections every socket of the library speaks (wire.py):
handshake with the right and wrong secrets, and fuzzed frames."""

import random
import socket
import struct
import threading

import pytest

from flink_torch_ml import AuthenticationError, FrameError
from flink_torch_ml.dataplane.wire import (Security, client_handshake, new_secret, recv_frame,
                                         send_frame, serve_handshake)

SECURITY = Security(new_secret(), max_frame_bytes=1 << 20)


def pair():
    return socket.socketpair()


def serve_in_thread(sock, security=SECURITY):
    outcome = {}

    def run():
        try:
            serve_handshake(sock, security, timeout=2)
            outcome["ok"] = True
        except Exception as error:  # noqa: BLE001 - inspected by the test
            outcome["error"] = error
            sock.close()  # as the library's servers do

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_peers_with_the_same_secret_authenticate_each_other():
    server, client = pair()
    thread, outcome = serve_in_thread(server)
    client_handshake(client, SECURITY, timeout=2)
    thread.join(5)
    assert outcome == {"ok": True}
    send_frame(client, b"hello ", b"world")
    assert bytes(recv_frame(server, 1024)) == b"hello world"


def test_a_wrong_secret_fails_on_both_sides():
    server, client = pair()
    thread, outcome = serve_in_thread(server)
    with pytest.raises(AuthenticationError):
        client_handshake(client, Security(new_secret()), timeout=2)
    thread.join(5)
    assert isinstance(outcome.get("error"), AuthenticationError)


def test_an_impostor_server_is_detected_by_the_client():
    server, client = pair()
    thread, outcome = serve_in_thread(server, Security(new_secret()))
    with pytest.raises(AuthenticationError):  # the impostor closes, or proves nothing
        client_handshake(client, SECURITY, timeout=2)
    thread.join(5)


def test_a_silent_peer_is_dropped_after_the_handshake_timeout():
    server, client = pair()
    with pytest.raises(OSError):  # socket.timeout
        serve_handshake(server, SECURITY, timeout=0.2)
    client.close()


def test_the_secret_must_be_long_and_is_never_printed():
    with pytest.raises(ValueError):
        Security(b"short")
    security = Security(new_secret())
    assert security.secret.hex() not in repr(security)


def test_oversized_length_is_refused_before_reading_the_payload():
    server, client = pair()
    client.sendall(struct.pack("<Q", (1 << 20) + 1))
    with pytest.raises(FrameError, match="exceeds the limit"):
        recv_frame(server, 1 << 20)


def test_truncated_frames_are_errors_and_a_clean_end_is_none():
    server, client = pair()
    client.sendall(struct.pack("<Q", 10) + b"12345")
    client.close()
    with pytest.raises(FrameError, match="closed after 5 of 10 bytes"):
        recv_frame(server, 1024)
    server2, client2 = pair()
    client2.sendall(b"\x01\x02")  # a partial length header
    client2.close()
    with pytest.raises(FrameError):
        recv_frame(server2, 1024)
    server3, client3 = pair()
    client3.close()
    assert recv_frame(server3, 1024) is None


def test_random_bytes_never_pass_the_handshake_or_crash_the_parser():
    rng = random.Random(7)
    for trial in range(200):
        server, client = pair()
        garbage = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))
        client.sendall(garbage)
        client.shutdown(socket.SHUT_WR)
        with pytest.raises((AuthenticationError, FrameError, OSError)):
            serve_handshake(server, SECURITY, timeout=1)
        server.close()
        client.close()
        # the same bytes as frames: a bounded result or a FrameError, never anything else
        server, client = pair()
        client.sendall(garbage)
        client.close()
        try:
            while True:
                frame = recv_frame(server, 1 << 20)
                if frame is None:
                    break
                assert len(frame) <= 1 << 20
        except FrameError:
            pass
        server.close()


def test_servers_reply_without_waiting_for_nagle():
    """Accepted connections have TCP_NODELAY: a request/reply protocol whose replies are
    small writes otherwise waits for the peer's delayed ACK (40 ms a request on Linux; it
    made every store operation, and so ingest, that slow)."""
    from flink_torch_ml.dataplane.wire import AuthenticatedServer

    seen = {}

    class Probe(AuthenticatedServer):
        def serve(self, conn, peer):
            seen["nodelay"] = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            conn.sendall(b"\x01")

    server = Probe("127.0.0.1", SECURITY, "probe")
    try:
        client = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        client_handshake(client, SECURITY, timeout=5)
        assert client.recv(1) == b"\x01"
        assert seen["nodelay"] != 0
        client.close()
    finally:
        server.close()
