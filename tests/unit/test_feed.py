"""The data plane to the workers (feed.py), over real sockets, without Flink."""

import socket
import struct
from collections import Counter

import numpy as np
import pytest

from flink_torch_ml import FeedError
from flink_torch_ml.dataplane.feed import FeedSender, FeedServer, LivenessWatch, \
    connect_authenticated
from flink_torch_ml.dataplane.wire import Security, new_secret, send_frame

SECURITY = Security(new_secret())


def closed_by_peer(conn) -> bool:
    """True when the peer closed the connection (a FIN, or a reset for unread data)."""
    try:
        return conn.recv(64) == b""
    except ConnectionResetError:
        return True


def new_server(timeout=5.0):
    return FeedServer("127.0.0.1", timeout, SECURITY)


def _batch(start: int, rows: int):
    ids = np.arange(start, start + rows, dtype=np.int64)
    return [ids, ids.astype(np.float32) / 2, np.stack([ids, ids]).T.astype(np.float32),
            np.array([f"s{i}" for i in ids], dtype=object)]


def _senders(servers, count, timeout=5.0):
    sent = Counter()

    def record(rank, rows):
        sent[rank] += rows

    senders = [FeedSender(len(servers), first, timeout, SECURITY, lambda r: servers[r].address,
                          record) for first in range(count)]
    return senders, sent


def test_every_row_reaches_exactly_one_worker_in_near_equal_shares():
    servers = [new_server(5.0) for _ in range(2)]
    senders, sent = _senders(servers, 3)
    start = 0
    for i in range(7):  # 7 batches per sender, 3 senders, 2 workers
        for sender in senders:
            sender.send(_batch(start, 10 + i))
            start += 10 + i
    shards = [s.columns(sent[r]) for r, s in enumerate(servers)]
    ids = np.concatenate([shard[0] for shard in shards])
    assert sorted(ids.tolist()) == list(range(start))  # each row once, none lost
    assert abs(len(shards[0][0]) - len(shards[1][0])) <= 3 * 16  # one batch per sender at most
    for shard in shards:  # columns stay aligned, dtypes and shapes kept
        assert shard[1].dtype == np.float32 and np.allclose(shard[1], shard[0] / 2)
        assert shard[2].shape == (len(shard[0]), 2)
        assert list(shard[3][:2]) == [f"s{i}" for i in shard[0][:2]]
    for s in senders:
        s.close()
    for s in servers:
        s.close()


def test_missing_rows_fail_after_the_timeout_instead_of_waiting_forever():
    server = new_server(0.3)
    senders, sent = _senders([server], 1)
    senders[0].send(_batch(0, 5))
    with pytest.raises(FeedError, match="Only 5 of the 9 rows"):
        server.columns(9)
    assert len(server.columns(sent[0])[0]) == 5
    server.close()


def test_more_rows_than_reported_is_an_error():
    server = new_server(1.0)
    senders, _ = _senders([server], 1)
    senders[0].send(_batch(0, 5))
    with pytest.raises(FeedError, match="received 5 rows, but the senders reported 4"):
        server.columns(4)
    server.close()


def test_a_dead_worker_fails_the_sender_naming_rank_and_address():
    servers = [new_server(1.0) for _ in range(2)]
    address = servers[1].address
    senders, _ = _senders(servers, 1)
    senders[0].send(_batch(0, 3))  # to rank 0
    servers[1].close()
    with pytest.raises(FeedError, match=f"rank 1 at {address}"):
        senders[0].send(_batch(3, 3))
    servers[0].close()


def test_a_damaged_frame_from_an_authenticated_sender_is_reported_and_not_acknowledged():
    feed = new_server(1.0)
    with connect_authenticated(feed.address, SECURITY, 2.0) as conn:
        send_frame(conn, b"junk")
        assert conn.recv(1) == b""  # closed, no acknowledgement
    with pytest.raises(FeedError, match="Receiving the shard failed"):
        feed.columns(1)
    feed.close()


def test_a_stranger_is_closed_without_touching_the_shard():
    feed = new_server(2.0)
    senders, sent = _senders([feed], 1)
    host, port = feed.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.recv(36)  # the challenge
        conn.sendall(struct.pack("<Q", 4) + b"junk" + bytes(64))
        assert closed_by_peer(conn)
    senders[0].send(_batch(0, 5))  # the run goes on
    assert len(feed.columns(sent[0])[0]) == 5 and feed.rejected == 1
    feed.close()


def test_a_sender_with_another_runs_secret_is_refused():
    feed = new_server(1.0)
    stranger = FeedSender(1, 0, 1.0, Security(new_secret()), lambda r: feed.address,
                          lambda r, n: None)
    with pytest.raises(FeedError, match="Could not connect to PyTorch worker rank 0"):
        stranger.send(_batch(0, 1))
    assert feed.rows == 0
    feed.close()


def test_a_lookup_error_reaches_the_caller():
    def lookup(rank):
        raise TimeoutError(f"rank {rank} never published its address")

    sender = FeedSender(2, 1, 1.0, SECURITY, lookup, lambda r, n: None)
    with pytest.raises(TimeoutError, match="rank 1 never published"):
        sender.send(_batch(0, 1))


def test_liveness_watch_tells_which_worker_went_away_first():
    import time

    servers = [new_server(5.0) for _ in range(3)]
    watch = LivenessWatch(lambda: {r: s.address for r, s in enumerate(servers)}, SECURITY,
                          poll=0.05)
    time.sleep(0.5)  # connected
    assert watch.first_dead() == []
    servers[1].close()
    deadline = time.monotonic() + 5
    while not watch.died and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)
    servers[0].close()  # a later end does not change who went first
    time.sleep(0.3)
    assert watch.first_dead() == [1]
    watch.stop()
    servers[2].close()


def test_liveness_watch_counts_a_refused_address_as_gone_and_an_unreachable_one_as_unknown():
    import time

    gone = new_server(5.0)
    address = gone.address
    gone.close()  # published, then nobody listens
    alive = new_server(5.0)
    watch = LivenessWatch(lambda: {0: alive.address, 1: address}, SECURITY, poll=0.05)
    deadline = time.monotonic() + 5
    while not watch.died and time.monotonic() < deadline:
        time.sleep(0.02)
    assert watch.first_dead() == [1]
    watch.stop()
    # a worker the client cannot reach at all: never guess a rank
    blind = LivenessWatch(lambda: {0: alive.address, 1: "256.0.0.1:9"}, SECURITY, poll=0.05)
    time.sleep(0.5)
    alive.close()
    deadline = time.monotonic() + 5
    while not blind.died and time.monotonic() < deadline:
        time.sleep(0.02)
    assert blind.died and blind.first_dead() == []
    blind.stop()


def test_liveness_watch_retries_a_worker_too_busy_to_answer_and_names_no_rank_meanwhile():
    import socket
    import time

    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the handshake
    silent_address = f"127.0.0.1:{silent.getsockname()[1]}"
    busy_until = time.monotonic() + 1.5
    real = new_server(5.0)
    other = new_server(5.0)
    watch = LivenessWatch(lambda: {0: other.address, 1: silent_address if
                                   time.monotonic() < busy_until else real.address},
                          SECURITY, poll=0.05)
    time.sleep(0.3)
    assert watch.first_dead() == []
    time.sleep(3.0)  # the retry reached rank 1's real server
    real.close()
    deadline = time.monotonic() + 5
    while not watch.died and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    other.close()
    time.sleep(0.3)
    assert watch.first_dead() == [1]
    watch.stop()
    silent.close()
