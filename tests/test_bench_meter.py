"""What the connections of a run share (trio_echo._bench.meter), without I/O: the
budget of messages and the round trips measured."""

from __future__ import annotations

from trio_echo._bench.meter import Meter


def meter(count: int | None, *, measure_from: int = 0, stop_at: int | None = None) -> Meter:
    made = Meter(lambda: 0, count=count)
    made.measure_from = measure_from
    if stop_at is not None:
        made.stop_at = stop_at
    return made


def test_a_batch_gets_what_is_left_of_the_count() -> None:
    budget = meter(10)
    assert budget.allow(5, 4) == 4
    assert budget.allow(5, 4) == 4
    assert budget.allow(5, 4) == 2  # the last two of ten
    assert budget.allow(5, 4) == 0
    assert budget.remaining == 0
    assert not budget.take(5)


def test_the_warm_up_is_not_counted_and_the_stop_time_ends_everything() -> None:
    budget = meter(3, measure_from=100, stop_at=200)
    assert budget.allow(50, 8) == 8  # warm-up: free
    assert budget.take(99)
    assert budget.remaining == 3
    assert budget.allow(100, 8) == 3
    assert budget.allow(199, 1) == 0
    unlimited = meter(None, stop_at=200)
    assert unlimited.allow(199, 1000) == 1000
    assert unlimited.allow(200, 1) == 0
    assert not unlimited.take(200)


def test_take_is_allow_of_one() -> None:
    budget = meter(2)
    assert [budget.take(1), budget.take(1), budget.take(1)] == [True, True, False]


def test_a_round_trip_counts_only_after_the_warm_up() -> None:
    seen: list[tuple[int, int]] = []
    figures = meter(None, measure_from=100)
    figures.on_round_trip = lambda number, latency: seen.append((number, latency))
    figures.round_trip(99, 150, 64)  # sent in the warm-up: verified, not measured
    figures.round_trip(100, 130, 64)
    figures.round_trip(110, 170, 64, number=7)  # UDP ping numbers by datagram
    assert (figures.round_trips, figures.bytes, figures.last) == (2, 128, 170)
    assert figures.histogram.total == 2
    assert figures.histogram.percentile(100) == 60
    assert seen == [(1, 30), (7, 60)]


def test_a_batch_of_measured_round_trips_is_counted_at_once() -> None:
    figures = meter(None)
    figures.measured([40, 50, 60], now=900, size=1024)
    assert (figures.round_trips, figures.bytes, figures.last) == (3, 3072, 900)
    assert figures.histogram.total == 3
    assert figures.histogram.percentile(50) == 50
