"""Prometheus metrics for the daemons (``--metrics-port``, off by default).

prometheus_client serves them from its own thread. That thread never reads the
loop's data structures: the loop copies its figures into the metrics on each
timer tick (their ``_export``), and metrics are thread-safe. Counters follow the loop's
own monotonically growing counters by adding the difference since the last tick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Seconds, from sub-millisecond round trips on a LAN to tasks that run for minutes.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class Metrics:
    def __init__(self, port: int, host: str = "0.0.0.0"):
        self.registry = CollectorRegistry()
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._histograms: dict[str, Histogram] = {}
        self._seen: dict[tuple[str, tuple], float] = {}
        self.server, self.thread = start_http_server(port, addr=host, registry=self.registry)
        self.port = self.server.server_port

    def gauge(self, name: str, help_text: str, value: float, **labels: str) -> None:
        metric = self._gauges.get(name)
        if metric is None:
            metric = self._gauges[name] = Gauge(f"clusterd_{name}", help_text, sorted(labels), registry=self.registry)
        (metric.labels(**labels) if labels else metric).set(value)

    def total(self, name: str, help_text: str, value: float, **labels: str) -> None:
        """Mirror a count that only grows in the loop as a Prometheus counter."""
        metric = self._counters.get(name)
        if metric is None:
            metric = self._counters[name] = Counter(
                f"clusterd_{name}", help_text, sorted(labels), registry=self.registry
            )
        key = (name, tuple(sorted(labels.items())))
        delta = value - self._seen.get(key, 0.0)
        if delta > 0:
            (metric.labels(**labels) if labels else metric).inc(delta)
            self._seen[key] = value

    def counters(self, name: str, help_text: str, values: Mapping[str, float], label: str) -> None:
        for key, value in values.items():
            self.total(name, help_text, value, **{label: key})

    def observe(self, name: str, help_text: str, values: Iterable[float]) -> None:
        metric = self._histograms.get(name)
        if metric is None:
            metric = self._histograms[name] = Histogram(
                f"clusterd_{name}", help_text, buckets=LATENCY_BUCKETS, registry=self.registry
            )
        for value in values:
            metric.observe(value)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
