"""Throughput over a sliding window, without sleeping."""

from cluster.coordinator.rate import Throughput


def test_rate_over_the_window_forgets_older_samples():
    t = Throughput(60.0)
    assert t.rate(0.0, 0) == 0.0
    for second in range(0, 121):
        t.sample(float(second), second * 10 if second < 60 else 600 + (second - 60) * 2)
    # The last minute ran at 2/s; the first minute's 10/s is out of the window.
    assert t.rate(120.0, 600 + 60 * 2) == 2.0


def test_rate_with_sparse_samples_starts_at_the_newest_sample_before_the_window():
    t = Throughput(60.0)
    t.sample(0.0, 0)
    t.sample(30.0, 300)
    t.sample(100.0, 400)  # the window starts at 40: the sample at 30 covers it, the one at 0 is dropped
    assert t.rate(100.0, 400) == 100 / 70
