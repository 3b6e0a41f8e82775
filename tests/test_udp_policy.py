"""The sans-IO UDP policy (``_udp_policy``): ports, sizes, token buckets, the table bound."""

from __future__ import annotations

import pytest

from trio_echo._config import UDPConfig
from trio_echo._udp_policy import (
    BLOCKED_SOURCE_PORTS,
    DROPPED_PORT,
    DROPPED_RATE_GLOBAL,
    DROPPED_RATE_SOURCE,
    DROPPED_SIZE,
    DatagramPolicy,
    TokenBucket,
)

UNLIMITED = UDPConfig(source_rate=None, source_bytes=None, global_rate=None, global_bytes=None)


def policy(config: UDPConfig = UNLIMITED, *, max_message: int = 1000) -> DatagramPolicy:
    return DatagramPolicy(config, max_message=max_message, now=0.0)


@pytest.mark.parametrize("port", sorted(BLOCKED_SOURCE_PORTS))
def test_small_service_source_ports_are_dropped(port: int) -> None:
    assert {0, 7, 13, 17, 19, 37} == BLOCKED_SOURCE_PORTS
    assert policy().decide("127.0.0.1", port, 10, 0.0) == DROPPED_PORT


@pytest.mark.parametrize("port", [1, 6, 8, 20, 38, 1024, 65535])
def test_other_source_ports_are_answered(port: int) -> None:
    assert policy().decide("127.0.0.1", port, 10, 0.0) is None


def test_oversize_is_dropped_and_max_message_and_empty_pass() -> None:
    p = policy(max_message=1000)
    assert p.decide("127.0.0.1", 5000, 1001, 0.0) == DROPPED_SIZE
    assert p.decide("127.0.0.1", 5000, 1000, 0.0) is None
    assert p.decide("127.0.0.1", 5000, 0, 0.0) is None


def test_per_source_datagram_rate_refills_with_time() -> None:
    p = policy(UDPConfig(source_rate=10, source_bytes=None, global_rate=None, global_bytes=None))
    answered = [p.decide("10.0.0.1", 5000, 1, 0.0) for _ in range(15)]
    assert answered.count(None) == 10
    assert answered[10:] == [DROPPED_RATE_SOURCE] * 5
    # Another source has its own bucket.
    assert p.decide("10.0.0.2", 5000, 1, 0.0) is None
    # A tenth of a second earns one datagram back, no more.
    assert p.decide("10.0.0.1", 5000, 1, 0.1) is None
    assert p.decide("10.0.0.1", 5000, 1, 0.1) == DROPPED_RATE_SOURCE
    # A long pause refills up to one second's worth, not more.
    results = [p.decide("10.0.0.1", 5000, 1, 100.0) for _ in range(12)]
    assert results.count(None) == 10


def test_per_source_byte_rate_and_a_bucket_fits_one_largest_datagram() -> None:
    p = policy(
        UDPConfig(source_rate=None, source_bytes=100, global_rate=None, global_bytes=None),
        max_message=500,
    )
    # Capacity is max(rate, max_message): one 500-byte datagram fits, then 5 s to refill.
    assert p.decide("10.0.0.1", 5000, 500, 0.0) is None
    assert p.decide("10.0.0.1", 5000, 1, 0.0) == DROPPED_RATE_SOURCE
    assert p.decide("10.0.0.1", 5000, 500, 4.0) == DROPPED_RATE_SOURCE
    assert p.decide("10.0.0.1", 5000, 500, 5.0) is None


def test_global_rate_caps_all_sources_and_drops_take_no_tokens() -> None:
    p = policy(UDPConfig(source_rate=2, source_bytes=None, global_rate=3, global_bytes=None))
    results = [p.decide(f"10.0.0.{i}", 5000, 1, 0.0) for i in range(5)]
    assert results == [None, None, None, DROPPED_RATE_GLOBAL, DROPPED_RATE_GLOBAL]
    # 10.0.0.3 was refused by the global bucket: its own bucket is still full.
    later = [p.decide("10.0.0.3", 5000, 1, 1.0) for _ in range(3)]
    assert later == [None, None, DROPPED_RATE_SOURCE]


def test_source_table_is_bounded_least_recently_seen_evicted() -> None:
    p = policy(UDPConfig(source_rate=1, source_bytes=None, global_rate=None, max_sources=3))
    for i in range(1000):
        p.decide(f"10.0.{i // 256}.{i % 256}", 5000, 1, 0.0)
        assert p.sources <= 3
    assert p.sources == 3
    for host in ("a", "b", "c"):
        assert p.decide(host, 5000, 1, 0.0) is None
    assert p.decide("a", 5000, 1, 0.0) == DROPPED_RATE_SOURCE  # a is now the most recent
    assert p.decide("d", 5000, 1, 0.0) is None  # evicts b, the least recent
    assert p.decide("a", 5000, 1, 0.0) == DROPPED_RATE_SOURCE  # a was kept
    assert p.decide("b", 5000, 1, 0.0) is None  # b was forgotten: a fresh bucket


def test_without_per_source_limits_no_table_is_kept() -> None:
    p = policy(UDPConfig(source_rate=None, source_bytes=None))
    for i in range(100):
        assert p.decide(f"10.0.0.{i}", 5000, 1, 0.0) is None
    assert p.sources == 0


def test_token_bucket_without_limits_allows_everything() -> None:
    bucket = TokenBucket(None, None, largest=10, now=0.0)
    for _ in range(100):
        assert bucket.allows(10**6, 0.0)
        bucket.take(10**6)
