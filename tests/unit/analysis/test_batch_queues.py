"""How :class:`xarray_terrascope.analysis.batch_cluster.Queues` deals batches to workers: with
one group of dates, one contiguous run of the Hilbert order each, and a worker done with
its run takes batches next to its own area, so each worker's batches stay one contiguous
range (the workers then share the tiles of one boundary only); with one group of dates
per worker, every batch of its group to each."""

from __future__ import annotations

import pytest

from xarray_terrascope.analysis.batch_cluster import Queues, date_groups


class _OneGroup:
    """A :class:`Queues` of one group of dates, dealing batch numbers (the group is 0)."""

    def __init__(self, queues: Queues) -> None:
        self.queues = queues

    def __getattr__(self, name: str):
        return getattr(self.queues, name)

    def next(self, worker):
        unit = self.queues.next(worker)
        if unit is None:
            return None
        assert unit[1] == 0
        return unit[0]


def _queues(todo: list[int], workers: list[str]) -> _OneGroup:
    return _OneGroup(Queues(todo, workers))


def _deal(queues, pattern: list[str]) -> dict[str, list]:
    """Ask for units in ``pattern``'s order of workers, repeated until none is left."""
    done: dict[str, list] = {}
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
    done = _deal(_queues(todo, ["a", "b"]), pattern)
    assert sorted(k for ks in done.values() for k in ks) == todo  # each batch once
    for worker, ks in done.items():
        # contiguous: the range from its smallest to its largest batch, nothing else
        assert sorted(ks) == list(range(min(ks), max(ks) + 1)), (worker, ks)


def test_a_worker_done_takes_the_batch_next_to_its_own_area():
    queues = _queues(list(range(10)), ["a", "b"])
    assert [queues.next("a") for _ in range(5)] == [0, 1, 2, 3, 4]
    assert queues.next("b") == 9  # b works from the far end towards a
    assert queues.next("a") == 5  # a's run is done: the batch next to 4, not 8
    assert queues.rebalanced == 1


def test_resumed_batches_and_three_workers_are_each_dealt_once():
    todo = [0, 1, 2, 5, 6, 7, 9, 11, 12]  # some were done before
    done = _deal(_queues(todo, ["a", "b", "c"]), ["a", "b", "c", "a"])
    assert sorted(k for ks in done.values() for k in ks) == todo


def test_a_new_worker_takes_over_the_run_of_a_dead_one():
    """A Nanny restarts a dead worker at a new address: the new one takes the dead one's
    run where it stopped, and the batches asked for in the dead one's name go to it."""
    queues = _queues(list(range(10)), ["a", "b"])
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
    queues = _queues(list(range(12)), ["a", "b"])
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


@pytest.mark.parametrize("pattern", [["a", "b"], ["a", "a", "a", "b"]])
def test_one_group_of_dates_per_worker_each_goes_through_every_batch(pattern):
    """Each worker reads its own dates' files, for every batch in order: a file is read
    by one worker only. A faster worker whose run is done takes the other's last units
    (from the end nearest its own last batch); each unit is dealt once."""
    todo = [0, 1, 3, 4, 5]  # 2 was done before
    queues = Queues(todo, ["a", "b"], groups=2)
    assert [queues.next("a") for _ in range(2)] == [(0, 0), (1, 0)]
    assert [queues.next("b") for _ in range(2)] == [(0, 1), (1, 1)]
    done = _deal(queues, pattern)
    units = [u for us in done.values() for u in us] + [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert sorted(units) == sorted((k, g) for k in todo for g in (0, 1))
    for worker, own in (("a", 0), ("b", 1)):
        mine = [k for k, g in done.get(worker, []) if g == own]
        assert mine == sorted(mine)  # its own group in the Hilbert order
    if pattern == ["a", "a", "a", "b"]:  # a is 3 times faster: it helps b from b's end
        taken = [k for k, g in done["a"] if g == 1]
        assert taken and taken == sorted(taken, reverse=True) and taken[0] == 5
        assert queues.rebalanced == len(taken)


def test_more_workers_than_dates_split_each_group_spatially():
    queues = Queues(list(range(6)), ["a", "b", "c"], groups=2)
    assert list(queues.runs["a"]) == [(k, 0) for k in (0, 1, 2)]
    assert list(queues.runs["c"]) == [(k, 0) for k in (5, 4, 3)]  # a's partner, backwards
    assert list(queues.runs["b"]) == [(k, 1) for k in range(6)]


@pytest.mark.parametrize(
    ("dates", "workers", "expected"),
    [
        (74, 2, [(0, 37), (37, 74)]),
        (7, 3, [(0, 2), (2, 5), (5, 7)]),
        (5, 1, [(0, 5)]),
        (5, 0, [(0, 5)]),  # no worker yet: one group
        (2, 4, [(0, 1), (1, 2)]),  # fewer dates than workers
        (0, 2, [(0, 0)]),
    ],
)
def test_date_groups_are_contiguous_and_balanced(dates, workers, expected):
    assert [(g.start, g.stop) for g in date_groups(dates, workers)] == expected


def test_the_last_unit_of_a_run_is_left_to_its_worker_unless_it_is_gone():
    """Taking a busy worker's last unit would not end the work sooner (the taker is busy
    as long) and makes two workers read the tiles around it; a dead worker's is taken."""
    queues = Queues([0, 1, 2], ["a", "b"], groups=2)
    assert [queues.next("a") for _ in range(3)] == [(0, 0), (1, 0), (2, 0)]
    assert [queues.next("b") for _ in range(2)] == [(0, 1), (1, 1)]
    assert queues.next("a") is None  # b's run holds one unit: b's own next
    assert queues.rebalanced == 0
    queues.leave("b")
    assert queues.next("a") == (2, 1)  # b is gone and no worker replaced it
    assert queues.rebalanced == 1
