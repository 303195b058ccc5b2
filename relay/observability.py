"""Logs and metrics.

Logs are structlog, one JSON object a line on stderr (or a console format for humans).
They never carry secrets, message text or bodies: :func:`redact` removes the keys that
could hold them, whatever a caller passes. Metrics are Prometheus, served at ``/metrics``.

The two metrics the ack path updates on every postback (``relay_postbacks_total`` and
``relay_ack_seconds``) are kept as plain numbers that the event loop's thread alone
updates, and turned into Prometheus samples when ``/metrics`` is scraped
(:class:`LoopCounter`, :class:`LoopHistogram`): prometheus-client's own take a lock on every
update, which cost the ack path a few per cent of its CPU.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

_REDACTED_KEYS = frozenset({
    "text", "body", "password", "authorization", "secret", "token", "content",
    "message_text", "signature",
})


def _scrub(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return "[redacted]"
    if isinstance(value, Mapping):
        return {k: "[redacted]" if str(k).lower() in _REDACTED_KEYS else _scrub(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop values that may hold secrets or message text, at any
    depth and whatever the key's case."""
    for key in list(event):
        if key.lower() in _REDACTED_KEYS:
            event[key] = "[redacted]"
        elif isinstance(event[key], Mapping | list | tuple):
            event[key] = _scrub(event[key])
    return event


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Set up structlog for the process."""
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    """A bound structlog logger."""
    return structlog.get_logger(name)


class Count:
    """One labelled series of a :class:`LoopCounter`: ``count.value += 1``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """Add ``amount``."""
        self.value += amount


class LoopCounter(Collector):
    """A labelled Prometheus counter for one thread's updates (the event loop's): no lock.

    :meth:`labels` returns the series' :class:`Count` (kept: the ack path holds on to its
    own); the samples are made when the registry is collected.
    """

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.labelnames = tuple(labelnames)
        self._series: dict[tuple[str, ...], Count] = {}
        registry.register(self)

    def labels(self, *values: str) -> Count:
        """The series with these label values (in ``labelnames`` order)."""
        count = self._series.get(values)
        if count is None:
            count = self._series[values] = Count()
        return count

    def describe(self) -> list[Metric]:
        """The family without samples (for the registry's duplicate-name check)."""
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        """The family with a sample per series."""
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, count in list(self._series.items()):
            family.add_metric(values, count.value)
        yield family


class LoopHistogram(Collector):
    """A Prometheus histogram for one thread's observations (the event loop's): no lock."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least ``value``."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def describe(self) -> list[Metric]:
        """The family without samples (for the registry's duplicate-name check)."""
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> Iterator[Metric]:
        """The family: cumulative buckets, ``+Inf``, the count and the sum."""
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((_bound(bound), running))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self.sum)
        yield family


def _bound(value: float) -> str:
    """A bucket bound as prometheus-client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if value == float("inf") else repr(value)


class Metrics:
    """relay's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.postbacks = LoopCounter("relay_postbacks",
                                     "Postbacks answered, by source and outcome",
                                     ["source", "outcome"], registry=r)
        self.ack_seconds = LoopHistogram(
            "relay_ack_seconds", "Time from request to acknowledgement (spooled)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5), registry=r)
        self.events = Counter("relay_events_published", "Records acknowledged by Kafka",
                              ["topic"], registry=r)
        self.duplicates = Counter("relay_duplicates", "Events not published again (dedup window)",
                                  ["source"], registry=r)
        self.dead_letters = Counter("relay_dead_letters", "Postbacks dead-lettered",
                                    ["source"], registry=r)
        self.notices = Counter("relay_provider_notices",
                               "Provider notices that are not message statuses (not published)",
                               ["source", "code"], registry=r)
        self.publish_errors = Counter("relay_publish_errors", "Failed publish attempts",
                                      registry=r)
        self.backlog = Gauge("relay_spool_pending", "Raw postbacks not yet published",
                             registry=r)
        self.spool_bytes = Gauge("relay_spool_bytes", "Bytes held in the spool", registry=r)
        self.kafka_up = Gauge("relay_kafka_connected", "1 when the producer is connected",
                              registry=r)
        self.publisher_paused = Gauge(
            "relay_publisher_paused",
            "1 while the ack path is busy enough that the publisher starts no new batch",
            registry=r)
        self.kafka_connected = False
        self.kafka_problem: str | None = None

    # --- what the pipeline reports (see relay.pipeline.Reporter) ---------------------------

    def published(self, topic: str, count: int) -> None:
        """Kafka acknowledged ``count`` records on ``topic``."""
        self.events.labels(topic).inc(count)

    def duplicated(self, source: str, count: int) -> None:
        """``count`` events of ``source`` were not published again."""
        self.duplicates.labels(source).inc(count)

    def dead_lettered(self, source: str) -> None:
        """A postback of ``source`` went to the dead-letter topic."""
        self.dead_letters.labels(source).inc()

    def noticed(self, source: str, code: str) -> None:
        """A provider notice (not a message status) arrived."""
        self.notices.labels(source, code).inc()

    def publish_failed(self) -> None:
        """A publish attempt failed and will be retried."""
        self.publish_errors.inc()

    def kafka(self, connected: bool, problem: str | None) -> None:
        """The producer's connection state changed."""
        self.kafka_connected, self.kafka_problem = connected, problem
        self.kafka_up.set(1 if connected else 0)
