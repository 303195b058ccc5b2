"""Logs and metrics.

Logs are structlog, one JSON object a line on stderr (or a console format for humans).
They never carry secrets, message text or bodies: :func:`redact` removes the keys that
could hold them, whatever a caller passes. Metrics are Prometheus, served at ``/metrics``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class Metrics:
    """relay's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.postbacks = Counter("relay_postbacks", "Postbacks answered, by source and outcome",
                                 ["source", "outcome"], registry=r)
        self.ack_seconds = Histogram(
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
