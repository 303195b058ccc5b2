"""Unit tests for relay.observability: redaction, structured logging and metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from relay.observability import (
    LoopCounter,
    LoopHistogram,
    Metrics,
    configure_logging,
    get_logger,
    redact,
)

SENSITIVE = ["text", "body", "password", "authorization", "secret", "token", "content",
             "message_text", "signature"]  # fmt: skip


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Leave structlog as it was found, since configure_logging is process-wide."""
    yield
    structlog.reset_defaults()


def lines(err: str) -> list[dict[str, Any]]:
    """The JSON log lines in captured stderr."""
    return [json.loads(line) for line in err.splitlines() if line.strip()]


# --- redact -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", SENSITIVE)
def test_redact_replaces_each_sensitive_key(key: str) -> None:
    """Every key that may hold a secret or message text has its value replaced."""
    event = {"event": "x", key: "the-sensitive-value", "source": "bw"}
    out = redact(None, "info", event)
    assert out[key] == "[redacted]"
    assert out["source"] == "bw"
    assert out["event"] == "x"


def test_redact_keeps_other_keys_and_adds_none() -> None:
    """Keys that are not sensitive are untouched and no keys are added."""
    event = {"event": "postback", "source": "bw", "raw_id": 3, "status": 401}
    assert redact(None, "info", dict(event)) == event


def test_redact_replaces_non_string_values_too() -> None:
    """Sensitive keys are redacted whatever the type of their value."""
    out = redact(None, "info", {"event": "x", "body": b"\x00raw", "token": None,
                                "content": {"text": "hi"}})  # fmt: skip
    assert out["body"] == out["token"] == out["content"] == "[redacted]"


def test_redact_returns_the_same_mapping() -> None:
    """redact works in place and returns the mapping it was given (structlog chaining)."""
    event = {"event": "x", "text": "hi"}
    assert redact(None, "info", event) is event


# --- configure_logging ------------------------------------------------------------------------


def test_logged_text_and_secrets_never_reach_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """An event logged with text, body, token and password prints none of their values."""
    configure_logging("info", "json")
    get_logger("relay.test").info(
        "postback_received", source="bw", text="Meet me at 5, code 123456",
        body='{"text": "Meet me"}', token="url-token-value", password="hunter2", raw_id=9,
    )  # fmt: skip
    err = capsys.readouterr().err
    for value in ("Meet me", "123456", "url-token-value", "hunter2"):
        assert value not in err
    (record,) = lines(err)
    assert record["event"] == "postback_received"
    assert record["source"] == "bw"
    assert record["raw_id"] == 9
    assert record["text"] == "[redacted]"
    assert record["level"] == "info"
    assert record["timestamp"].endswith("Z")


def test_console_format_also_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    """The human console format redacts the same keys."""
    configure_logging("debug", "console")
    get_logger("relay.test").warning("inbound", text="private words", signature="sig-value")
    err = capsys.readouterr().err
    assert "inbound" in err
    assert "private words" not in err
    assert "sig-value" not in err
    assert "[redacted]" in err
    with pytest.raises(json.JSONDecodeError):
        json.loads(err.splitlines()[0])


def test_log_level_filters_lower_levels(capsys: pytest.CaptureFixture[str]) -> None:
    """Events below the configured level are not printed."""
    configure_logging("warning", "json")
    log = get_logger("relay.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [r["event"] for r in lines(capsys.readouterr().err)] == ["w", "e"]


def test_unknown_level_falls_back_to_info(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown level name logs at info."""
    configure_logging("chatty", "json")
    log = get_logger("relay.test")
    log.debug("d")
    log.info("i")
    assert [r["event"] for r in lines(capsys.readouterr().err)] == ["i"]


def test_bound_context_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    """Sensitive values bound to a logger are redacted when an event is logged."""
    configure_logging("info", "json")
    get_logger("relay.test").bind(authorization="Basic dXNlcjpwYXNz").info("refused")
    err = capsys.readouterr().err
    assert "dXNlcjpwYXNz" not in err
    assert lines(err)[0]["authorization"] == "[redacted]"


def test_context_vars_are_merged_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """Context variables are merged into events and go through redaction."""
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(request_id="r-1", token="ctx-token")
    try:
        get_logger("relay.test").info("handled")
    finally:
        structlog.contextvars.clear_contextvars()
    err = capsys.readouterr().err
    assert "ctx-token" not in err
    assert lines(err)[0]["request_id"] == "r-1"


# --- metrics ----------------------------------------------------------------------------------


def test_metrics_instances_have_separate_registries() -> None:
    """Two Metrics objects can coexist and count independently."""
    a, b = Metrics(), Metrics()
    a.postbacks.labels("bw", "accepted").inc()
    a.postbacks.labels("bw", "accepted").inc()
    b.backlog.set(7)
    text_a = generate_latest(a.registry).decode()
    text_b = generate_latest(b.registry).decode()
    assert 'relay_postbacks_total{outcome="accepted",source="bw"} 2.0' in text_a
    assert "relay_postbacks_total{" not in text_b
    assert "relay_spool_pending 7.0" in text_b
    assert "relay_spool_pending 0.0" in text_a


def test_metrics_expose_every_documented_series() -> None:
    """Every relay metric is registered under its relay_ name."""
    m = Metrics()
    m.ack_seconds.observe(0.003)
    text = generate_latest(m.registry).decode()
    for name in ("relay_postbacks", "relay_ack_seconds", "relay_events_published",
                 "relay_duplicates", "relay_dead_letters", "relay_provider_notices",
                 "relay_publish_errors", "relay_spool_pending", "relay_spool_bytes",
                 "relay_kafka_connected"):  # fmt: skip
        assert re.search(rf"^# TYPE {name}(_total)? (counter|gauge|histogram)$", text, re.M)
    assert 'relay_ack_seconds_bucket{le="0.005"} 1.0' in text


BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5)


def _samples(registry: CollectorRegistry) -> list[str]:
    """The exposition's sample lines, without the ``_created`` timestamps."""
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if line and "_created" not in line]


@given(st.lists(st.one_of(st.sampled_from(BUCKETS), st.floats(0, 10, allow_nan=False)),
                max_size=40))
def test_loop_histogram_exposes_what_a_prometheus_histogram_does(values: list[float]) -> None:
    """LoopHistogram's exposition is prometheus-client's Histogram's, bound values included."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("relay_x_seconds", "doc", BUCKETS, ours)
    reference = Histogram("relay_x_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for value in values:
        mine.observe(value)
        reference.observe(value)
    assert _samples(ours)[:-1] == _samples(theirs)[:-1]  # all but the sum: float sums differ
    assert mine.sum == pytest.approx(sum(values))


@given(st.lists(st.tuples(st.sampled_from(["bw", "mm"]),
                          st.sampled_from(["accepted", "forbidden"]),
                          st.integers(1, 3)), max_size=20))
def test_loop_counter_exposes_what_a_prometheus_counter_does(
        incs: list[tuple[str, str, int]]) -> None:
    """LoopCounter's exposition is prometheus-client's Counter's for the same increments."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopCounter("relay_y", "doc", ["source", "outcome"], ours)
    reference = Counter("relay_y", "doc", ["source", "outcome"], registry=theirs)
    for source, outcome, amount in incs:
        mine.labels(source, outcome).inc(amount)
        reference.labels(source, outcome).inc(amount)
    assert sorted(_samples(ours)) == sorted(_samples(theirs))


def test_loop_metrics_refuse_a_second_family_of_the_same_name() -> None:
    """A registry refuses a LoopCounter whose name another metric has, as for its own."""
    registry = CollectorRegistry()
    Counter("relay_z", "doc", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounter("relay_z", "doc", [], registry)
