"""The bench's latency histogram (trio_echo._bench.histogram), cross-checked
against the ``hdrhistogram`` package."""

from __future__ import annotations

import io
import random

import pytest
from hdrh.histogram import HdrHistogram

from trio_echo._bench.histogram import Histogram


def recorded(values: list[int]) -> tuple[Histogram, HdrHistogram]:
    ours, theirs = Histogram(), HdrHistogram(1, 1 << 42, 3)
    for value in values:
        ours.record(value)
        theirs.record_value(value)
    return ours, theirs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_agree_with_hdrhistogram_within_a_tenth_of_a_percent(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(11, 1.5)) + 1 for _ in range(20_000)]
    ours, theirs = recorded(values)
    exact = sorted(values)
    for percent in (0, 50, 90, 99, 99.9, 100):
        assert ours.percentile(percent) == pytest.approx(
            theirs.get_value_at_percentile(percent), rel=1e-3
        )
        rank = max(1, -(-len(exact) * percent // 100))
        assert ours.percentile(percent) == pytest.approx(exact[int(rank) - 1], rel=1e-3)
    assert ours.mean() == pytest.approx(theirs.get_mean_value(), rel=1e-3)
    assert ours.total == len(values)


def test_small_values_are_exact_and_extremes_are_clamped() -> None:
    histogram = Histogram()
    for value in (-5, 0, 1, 2047, 1 << 50):
        histogram.record(value)
    assert histogram.percentile(0) == 0
    assert histogram.percentile(40) == 0  # -5 counts as 0
    assert histogram.percentile(60) == 1
    assert histogram.percentile(80) == 2047
    assert histogram.percentile(100) == pytest.approx(1 << 42, rel=1e-3)


def test_an_empty_histogram_reports_zeros() -> None:
    histogram = Histogram()
    assert histogram.percentile(50) == 0
    assert histogram.mean() == histogram.stddev() == 0.0


def test_hgrm_text_has_hdrhistograms_shape_and_values() -> None:
    rng = random.Random(7)
    ours, theirs = recorded([rng.randrange(20_000, 2_000_000) for _ in range(5_000)])
    text = io.StringIO()
    ours.write_hgrm(text)
    reference = io.BytesIO()
    theirs.output_percentile_distribution(reference, 1e6)
    lines = text.getvalue().splitlines()
    reference_lines = reference.getvalue().decode().splitlines()
    assert lines[:2] == reference_lines[:2]  # the header the plotter looks for
    rows = [line.split() for line in lines[2:] if not line.startswith("#")]
    # Value, percentile, count (and 1/(1-percentile) but on the last row).
    assert all(len(row) == 4 for row in rows[:-1])
    assert rows[-1][1:] == ["1.000000000000", "5000"]
    assert [float(row[1]) for row in rows] == sorted(float(row[1]) for row in rows)
    assert float(rows[0][0]) == pytest.approx(theirs.get_min_value() / 1e6, rel=1e-3)
    assert float(rows[-1][0]) == pytest.approx(theirs.get_max_value() / 1e6, rel=1e-3)
    median = next(row for row in rows if float(row[1]) >= 0.5)
    assert float(median[0]) == pytest.approx(theirs.get_value_at_percentile(50) / 1e6, rel=2e-3)
    assert lines[-3].startswith("#[Mean    =")
    assert lines[-2].startswith("#[Max     =")
    assert lines[-1].startswith("#[Buckets =")


def test_a_window_is_what_was_recorded_since_a_snapshot() -> None:
    histogram = Histogram()
    for value in range(1000, 2000):
        histogram.record(value)
    snapshot = histogram.copy()
    for value in (5_000_000, 5_000_000):
        histogram.record(value)
    window = histogram.minus(snapshot)
    assert window.total == 2
    assert window.percentile(0) == pytest.approx(5_000_000, rel=1e-3)
    assert snapshot.total == 1000
    assert snapshot.percentile(100) == 1999


def test_recording_a_batch_counts_as_recording_each_value() -> None:
    rng = random.Random(7)
    values = [-3, 0, 2047, 2048, 1 << 50] + [rng.randrange(1, 1 << 40) for _ in range(5000)]
    one_by_one, batched = Histogram(), Histogram()
    for value in values:
        one_by_one.record(value)
    batched.record_many(values[:2000])
    batched.record_many(values[2000:])
    batched.record_many([])
    assert batched.total == one_by_one.total == len(values)
    assert list(batched.minus(Histogram())._buckets()) == list(one_by_one._buckets())
