"""How :class:`xarray_terrascope.analysis.batch_cluster.Queues` deals batches to workers: one
contiguous run of the Hilbert order each, and a worker done with its run takes batches
next to its own area, so each worker's batches stay one contiguous range (the workers
then share the tiles of one boundary only)."""

from __future__ import annotations

import pytest

from xarray_terrascope.analysis.batch_cluster import Queues


def _deal(queues: Queues, pattern: list[str]) -> dict[str, list[int]]:
    """Ask for batches in ``pattern``'s order of workers, repeated until none is left."""
    done: dict[str, list[int]] = {}
    while True:
        got = [(w, queues.next(w)) for w in pattern]
        for worker, k in got:
            if k is not None:
                done.setdefault(worker, []).append(k)
        if all(k is None for _, k in got):
            return done


@pytest.mark.parametrize("pattern", [["a", "a", "b"], ["a", "b", "b", "b"], ["a", "b"]])
def test_each_worker_does_one_contiguous_range_however_fast(pattern):
    todo = list(range(20))
    done = _deal(Queues(todo, ["a", "b"]), pattern)
    assert sorted(k for ks in done.values() for k in ks) == todo  # each batch once
    for worker, ks in done.items():
        # contiguous: the range from its smallest to its largest batch, nothing else
        assert sorted(ks) == list(range(min(ks), max(ks) + 1)), (worker, ks)


def test_a_worker_done_takes_the_batch_next_to_its_own_area():
    queues = Queues(list(range(10)), ["a", "b"])
    assert [queues.next("a") for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queues.next("b") == 9  # b works from the far end towards a
    assert queues.next("a") == 5  # a's run is done: the batch next to 4, not 8
    assert queues.rebalanced == 1


def test_resumed_batches_and_three_workers_are_each_dealt_once():
    todo = [0, 1, 2, 5, 6, 7, 9, 11, 12]  # some were done before
    done = _deal(Queues(todo, ["a", "b", "c"]), ["a", "b", "c", "a"])
    assert sorted(k for ks in done.values() for k in ks) == todo


def test_a_new_worker_takes_over_the_run_of_a_dead_one():
    """A Nanny restarts a dead worker at a new address: the new one takes the dead one's
    run where it stopped, and the batches asked for in the dead one's name go to it."""
    queues = Queues(list(range(10)), ["a", "b"])
    assert [queues.next("a"), queues.next("b")] == [0, 9]
    queues.leave("a")
    assert queues.current("a") == "a"  # no new worker yet: the run waits in a's name
    assert queues.next("a") == 1  # ... and its batches go wherever the scheduler says
    queues.join("c")
    assert queues.current("a") == "c"
    assert [queues.next("c") for _ in range(3)] == [2, 3, 4]
    assert queues.next("c") == 5  # c's run is done: the batch next to its last one
    assert queues.rebalanced == 1
    done = _deal(queues, ["b", "c"])
    assert sorted(done["b"] + done["c"]) == [6, 7, 8]


def test_a_new_worker_before_the_dead_ones_leave_and_a_second_death():
    """The scheduler may tell a new worker before the dead one's removal; a worker that
    took over a run and dies in turn passes it on; each batch is dealt once."""
    queues = Queues(list(range(12)), ["a", "b"])
    got = [queues.next("a"), queues.next("b")]
    queues.join("c")  # a spare until a worker goes
    assert queues.current("a") == "a"
    queues.leave("a")
    assert queues.current("a") == "c"
    got.append(queues.next(queues.current("a")))
    queues.leave("c")
    queues.join("d")
    assert queues.current("a") == "d"
    queues.leave("e")  # a worker the run never knew: nothing to take over
    queues.join("f")
    queues.leave("f")  # a spare that goes
    done = _deal(queues, ["d", "b"])
    assert sorted(got + done["d"] + done["b"]) == list(range(12))
    assert done["d"][0] == 2  # d goes on with a's run where c stopped
