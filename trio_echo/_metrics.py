"""The Prometheus exposition of the server's statistics: a collector over statistics snapshots.

Nothing is counted here: :class:`StatisticsCollector` turns the snapshot a
*source* returns at scrape time (:meth:`EchoServer.statistics`, or the
``--workers`` supervisor's sum of its workers' reports) into metric families,
so serving metrics costs the echo's hot path nothing at all.  It registers in
a :class:`~prometheus_client.CollectorRegistry` of its own, never the global
one, so two servers in one process do not collide.

Needs ``prometheus_client`` (``pip install 'trio-echo[metrics]'``); this
module is imported only when metrics are served.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Final

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from ._faults import KINDS
from ._reasons import ALL as ALL_REASONS
from ._stats import ServerStatistics, UDPStatistics
from ._version import __version__

__all__ = ["PREFIX", "Exposition", "Snapshot", "StatisticsCollector"]

#: Every series name starts with this.
PREFIX: Final = "trio_echo_"

#: Every kind of injected fault, always exposed (0 until it acts), so that
#: ``rate()`` and dashboards see the series before the first event.
FAULT_KINDS: Final = KINDS


@attrs.frozen(kw_only=True)
class Snapshot:
    """What one scrape shows: the total, and each worker's own figures."""

    total: ServerStatistics
    """The server's counters (with ``--workers``, the sum over every worker
    that ever ran, so that the sums never go down when a worker restarts)."""

    workers: Mapping[int, ServerStatistics] = attrs.field(factory=dict)
    """Each running worker's counters by worker number; empty for a single process."""


#: The plain counters: (name without prefix and ``_total``, help, which statistic).
COUNTERS: Final[tuple[tuple[str, str, Callable[[ServerStatistics], int]], ...]] = (
    ("connections_accepted", "Connections accepted.", lambda s: s.accepted),
    ("rounds", "Messages echoed in full.", lambda s: s.rounds),
    ("received_bytes", "Bytes received from clients.", lambda s: s.bytes_in),
    ("sent_bytes", "Bytes echoed to clients.", lambda s: s.bytes_out),
    (
        "connection_limit_waits",
        "Times every connection slot was taken and the accept loop waited.",
        lambda s: s.limit_waits,
    ),
    (
        "accept_errors",
        "Times accept() failed for lack of resources (EMFILE, ENFILE, ...).",
        lambda s: s.accept_errors,
    ),
)


class StatisticsCollector(Collector):
    """A custom collector: every series from the snapshot *source* returns.

    *source* is called once per scrape, synchronously; ``None`` (the server is
    not started yet) exposes only the process's start time and build info.
    With per-worker figures, each family has the sum (no ``worker`` label)
    followed by one sample per worker (``worker="N"``).
    """

    def __init__(self, source: Callable[[], Snapshot | None], *, start_time: float) -> None:
        self._source = source
        self._start_time = start_time

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily(PREFIX + "build", "trio-echo's version.")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily(
            PREFIX + "process_start_time_seconds",
            "When this process started, in seconds since the Unix epoch.",
            value=self._start_time,
        )
        snapshot = self._source()
        if snapshot is None:
            return
        parts: list[tuple[dict[str, str], ServerStatistics]] = [({}, snapshot.total)]
        parts += [({"worker": str(n)}, s) for n, s in sorted(snapshot.workers.items())]
        for name, text, value_of in COUNTERS:
            family = CounterMetricFamily(PREFIX + name, text)
            for labels, stats in parts:
                family.samples.append(Sample(family.name + "_total", labels, value_of(stats)))
            yield family
        closed = CounterMetricFamily(
            PREFIX + "connections_closed", "Connections closed, by close reason."
        )
        faults = CounterMetricFamily(
            PREFIX + "faults", "Times each injected fault acted, by kind."
        )
        active = GaugeMetricFamily(PREFIX + "connections_active", "Connections open now.")
        for labels, stats in parts:
            by_reason = stats.closed_by_reason
            for reason in _with_known(by_reason, ALL_REASONS):
                sample_labels = {"reason": reason, **labels}
                closed.samples.append(
                    Sample(closed.name + "_total", sample_labels, by_reason.get(reason, 0))
                )
            for kind in _with_known(stats.faults, FAULT_KINDS):
                sample_labels = {"kind": kind, **labels}
                faults.samples.append(
                    Sample(faults.name + "_total", sample_labels, stats.faults.get(kind, 0))
                )
            active.samples.append(Sample(active.name, labels, stats.active))
        yield from (active, closed, faults)
        if snapshot.total.udp is not None:
            yield from _udp_families(snapshot.total.udp)


#: The UDP counters (issue 15): (name without prefix and ``_total``, help, statistic).
UDP_COUNTERS: Final[tuple[tuple[str, str, Callable[[UDPStatistics], int]], ...]] = (
    ("udp_datagrams_received", "UDP datagrams received.", lambda u: u.received),
    ("udp_datagrams_echoed", "UDP echoes sent.", lambda u: u.echoed),
    ("udp_received_bytes", "Bytes of the UDP datagrams admitted.", lambda u: u.bytes_in),
    ("udp_sent_bytes", "Bytes echoed over UDP.", lambda u: u.bytes_out),
)

#: Every UDP drop reason, always exposed (0 until it happens).
UDP_DROP_REASONS: Final = (
    "dropped_port",
    "dropped_size",
    "dropped_rate_source",
    "dropped_rate_global",
    "dropped_backlog",
    "dropped_send_error",
)


def _udp_families(udp: UDPStatistics) -> Iterator[Metric]:
    """The UDP series (a single process: UDP does not run with ``--workers``)."""
    for name, text, value_of in UDP_COUNTERS:
        yield CounterMetricFamily(PREFIX + name, text, value=value_of(udp))
    dropped = CounterMetricFamily(
        PREFIX + "udp_datagrams_dropped",
        "UDP datagrams not answered, by reason.",
        labels=["reason"],
    )
    for reason in _with_known(udp.dropped_by_reason, UDP_DROP_REASONS):
        dropped.add_metric([reason], udp.dropped_by_reason.get(reason, 0))
    yield dropped
    yield GaugeMetricFamily(
        PREFIX + "udp_sources",
        "Source addresses whose UDP rate buckets are remembered now.",
        value=udp.sources,
    )


def _with_known(counts: Mapping[str, int], known: tuple[str, ...]) -> list[str]:
    """Every known key, in order, then any other key *counts* has."""
    return [*known, *sorted(set(counts) - set(known))]


class Exposition:
    """Renders a collector's series for one scrape, in the format the scraper asks for."""

    def __init__(self, source: Callable[[], Snapshot | None], *, start_time: float) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StatisticsCollector(source, start_time=start_time))

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The body and its ``Content-Type`` for a request's *accept* header.

        The Prometheus text format, or OpenMetrics when *accept* asks for it
        (as Prometheus itself does); prometheus_client chooses.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self._registry), content_type
