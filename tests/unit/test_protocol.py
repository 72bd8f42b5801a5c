"""The run's store protocol (protocol.py) on a real local store: the one bounded wait, error
records, and one rank's side of the run (worker.py): claim, rebalance, barrier."""

import threading
import time

import numpy as np
import pytest

from flink_torch_ml import RendezvousTimeoutError, WorkerError
from flink_torch_ml.dataplane.protocol import FEED, RunStore, wait_until
from flink_torch_ml.dataplane.store import StoreClient, StoreServer
from flink_torch_ml.dataplane.wire import Security, new_secret
from flink_torch_ml.worker.node import WorkerRun

SECURITY = Security(new_secret())


@pytest.fixture
def server():
    server = StoreServer("127.0.0.1", SECURITY)
    yield server
    server.close()


def run_store(server, world_size=2, timeout=2.0, attempt=0):
    return RunStore(StoreClient("127.0.0.1", server.port, SECURITY, 5.0), attempt, world_size,
                    timeout)


def test_wait_until_returns_the_value_and_names_missing_ranks_on_timeout():
    assert wait_until(lambda: 42, 1, "nothing") == 42
    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError,
                       match=r"Rank 1 timed out after 0 s waiting for the peers; "
                             r"rank\(s\) \[0, 2\] never arrived"):
        wait_until(lambda: None, 0.3, "the peers", missing=lambda: [0, 2], who="Rank 1")
    assert 0.3 <= time.monotonic() - started < 2
    with pytest.raises(TimeoutError):  # also a TimeoutError for callers that catch that
        wait_until(lambda: False, 0.05, "x")


def test_wait_until_ends_at_once_when_a_peer_failed():
    started = time.monotonic()
    with pytest.raises(WorkerError, match="stopped waiting for x: rank 2: boom"):
        wait_until(lambda: False, 30, "x", failed=lambda: "rank 2: boom")
    assert time.monotonic() - started < 1


def test_errors_are_json_records_and_the_first_one_wins(server):
    run = run_store(server)
    assert run.first_error() is None
    run.record_error(1, "ValueError: first\ntraceback", "ValueError")
    run.record_error(FEED, "FeedError: later", "FeedError")
    first = run.first_error()
    assert (first.who, first.type_name, first.text) == ("1", "ValueError",
                                                       "ValueError: first\ntraceback")
    assert run.peer_error(0) == "rank 1: ValueError: first\ntraceback"
    assert run.peer_error(1) == "the feed: FeedError: later"


def test_attempts_do_not_see_each_others_keys(server):
    first, second = run_store(server, attempt=0), run_store(server, attempt=1)
    first.record_error(0, "old", "")
    assert second.first_error() is None and first.keys.claim(0) != second.keys.claim(0)


def test_wait_for_ranks_names_the_ranks_that_never_claimed(server):
    run = run_store(server, world_size=3, timeout=0.3)
    run.add(run.keys.claim(1), 1)
    with pytest.raises(RendezvousTimeoutError, match=r"rank\(s\) \[0, 2\] never arrived"):
        run.wait_for_ranks(run.keys.claim, "every rank to start", rank=1)


def in_ranks(server, world_size, work, timeout=5.0):
    """Run ``work(worker_run)`` for every rank in threads; their results or errors."""
    results, errors = {}, {}

    def one(rank):
        try:
            results[rank] = work(WorkerRun(run_store(server, world_size, timeout), rank))
        except Exception as error:  # noqa: BLE001 - returned to the test
            errors[rank] = error

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results, errors


@pytest.mark.parametrize("counts", [[1257, 0], [0, 1257], [1, 0], [0, 1], [5, 0, 0], [0, 0]])
def test_rebalance_keeps_every_row_once_and_gives_empty_shards_the_array_width(server, counts):
    """The bug behind issue 10: a rank that received nothing had a [0, 0] array column,
    and concatenating rows moved to it failed."""
    start = np.cumsum([0] + counts)

    def shard(rank):
        ids = np.arange(start[rank], start[rank + 1])
        if not counts[rank]:  # what an empty feed gives: width unknown
            return [np.empty((0, 0), np.float32), np.empty(0, np.int64)]
        return [np.repeat(ids[:, None], 64, axis=1).astype(np.float32), ids]

    results, errors = in_ranks(server, len(counts), lambda w: w.rebalance(shard(w.rank)))
    assert not errors, errors
    sizes = [len(results[r][1]) for r in range(len(counts))]
    assert max(sizes) - min(sizes) <= 1
    ids = np.concatenate([results[r][1] for r in range(len(counts))])
    assert sorted(ids.tolist()) == list(range(sum(counts)))
    if sum(counts):
        for r in range(len(counts)):
            features = results[r][0]
            assert features.shape == (sizes[r], 64)
            assert (features[:, 0] == results[r][1]).all()


def test_ranks_sharing_a_process_are_refused(server):
    results, errors = in_ranks(server, 2, lambda worker: worker.claim(worker.rank))
    assert all("Ranks share a Python process" in str(e) for e in errors.values())
    assert len(errors) == 2


def test_barrier_names_the_rank_that_never_finishes(server):
    def finish(worker):
        if worker.rank == 1:
            time.sleep(2.5)  # hangs past rank 0's barrier timeout
            return
        worker.barrier()

    started = time.monotonic()
    results, errors = in_ranks(server, 2, finish, timeout=1.0)
    assert isinstance(errors.get(0), WorkerError)
    assert "only 1 of 2 ranks finished" in str(errors[0])
    assert "rank(s) [1] hang or died" in str(errors[0])
    assert time.monotonic() - started < 10


def test_barrier_fails_fast_when_a_peer_recorded_an_error(server):
    def finish(worker):
        if worker.rank == 1:
            worker.fail("ValueError: boom", "ValueError")
            return
        worker.barrier()

    results, errors = in_ranks(server, 2, finish, timeout=20.0)
    assert "rank 1: ValueError: boom" in str(errors[0])


def test_a_rank_claimed_twice_is_an_error(server):
    run = run_store(server)
    run.add(run.keys.claim(0), 1)
    with pytest.raises(WorkerError, match="Rank 0 started twice"):
        WorkerRun(run, 0).claim(3)
