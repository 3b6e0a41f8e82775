"""The sans-IO UDP fault plan (``_udp_faults``): loss, duplication, reordering, delays."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest

from trio_echo import Faults
from trio_echo._udp_faults import REORDER_MAX_HOLD, DatagramFaultPlan


def plan(seed: int | None = 1, **faults: Any) -> DatagramFaultPlan:
    return DatagramFaultPlan(Faults(**faults), seed=seed, events=Counter())


def payloads(p: DatagramFaultPlan, count: int, now: float = 0.0) -> list[bytes]:
    out: list[bytes] = []
    for i in range(count):
        out += [data for _, data, _ in p.admit(b"%d" % i, "dest", now)]
    return out


def test_no_fault_echoes_each_once_at_once() -> None:
    p = plan()
    assert p.admit(b"x", ("127.0.0.1", 5), 3.0) == [(3.0, b"x", ("127.0.0.1", 5))]
    assert not p.events


def test_loss_drops_the_given_share_and_replays_with_the_seed() -> None:
    first = payloads(plan(seed=7, loss=25), 2000)
    again = payloads(plan(seed=7, loss=25), 2000)
    other = payloads(plan(seed=8, loss=25), 2000)
    assert first == again
    assert first != other
    assert 1400 < len(first) < 1600
    assert len(set(first)) == len(first)


@pytest.mark.parametrize(("loss", "expected"), [(0, 100), (100, 0)])
def test_loss_bounds(loss: float, expected: int) -> None:
    p = plan(loss=loss)
    assert len(payloads(p, 100)) == expected
    assert p.events["loss"] == 100 - expected


def test_duplication_sends_copies_back_to_back() -> None:
    p = plan(seed=3, duplicate=50)
    out = payloads(p, 1000)
    counts = Counter(out)
    assert set(counts.values()) == {1, 2}
    assert sum(counts.values()) - 1000 == p.events["duplicate"]
    assert 400 < p.events["duplicate"] < 600
    assert out == sorted(out, key=lambda data: int(data))  # copies adjacent, order kept


def test_reorder_one_swaps_pairs() -> None:
    p = plan(reorder=1)
    assert payloads(p, 6) == [b"1", b"0", b"3", b"2", b"5", b"4"]
    assert p.events["reorder"] == 3


def test_reorder_k_holds_behind_the_next_k() -> None:
    assert payloads(plan(reorder=3), 8) == [b"1", b"2", b"3", b"0", b"5", b"6", b"7", b"4"]


def test_a_held_datagram_goes_out_after_the_maximum_hold() -> None:
    p = plan(reorder=5)
    assert p.admit(b"last", "dest", 10.0) == []
    assert p.held_until == 10.0 + REORDER_MAX_HOLD
    assert p.expire(10.0 + REORDER_MAX_HOLD - 0.001) == []
    assert p.expire(10.0 + REORDER_MAX_HOLD) == [(11.0, b"last", "dest")]
    assert p.held_until == math.inf
    assert p.expire(20.0) == []


def test_flush_releases_the_held_datagram_at_once() -> None:
    p = plan(reorder=5)
    p.admit(b"a", "dest", 0.0)
    assert p.flush(0.5) == [(0.5, b"a", "dest")]
    assert p.flush(0.6) == []


def test_latency_and_jitter_delay_each_echo_reproducibly() -> None:
    def times(seed: int) -> list[float]:
        p = plan(seed=seed, latency=0.1, jitter=0.05)
        return [when for i in range(50) for when, _, _ in p.admit(b"x", "d", float(i))]

    delays = [when - i for i, when in enumerate(times(5))]
    assert times(5) == times(5)
    assert all(0.05 <= d <= 0.15 for d in delays)
    assert len(set(delays)) > 40
    fixed = plan(latency=0.2)
    assert fixed.admit(b"x", "d", 1.0) == [(1.2, b"x", "d")]
    assert fixed.events["latency"] == 1
