"""The HTTP face: routes, status codes, error bodies, and that a 2xx means stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import basic
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from relay.app import create_app, hook_path
from relay.service import Service
from relay.settings import parse

BODY = b'[{"type":"message-delivered","time":"2025-03-01T10:00:00Z","to":"+15554443333",' \
       b'"message":{"id":"m1","from":"+15552221111","to":["+15554443333"]}}]'
AUTH = basic("relay", "pw")


def make(tmp_path: Path, **spool: Any) -> tuple[TestClient, Service]:
    """A TestClient around a Service with two sources, one allowlisted, one token-authenticated."""
    settings = parse({
        "server": {"trusted_proxies": ["10.9.0.0/16"], "max_body_bytes": 4096},
        "spool": {"dir": str(tmp_path), **spool},
        "sources": [
            {"name": "bw", "provider": "bandwidth",
             "basic_auth": {"username": "relay", "password": "env:P"}},
            {"name": "bw-ip", "provider": "bandwidth", "allow_ips": ["198.51.100.0/24", "2001:db8::/32"],
             "basic_auth": {"username": "relay", "password": "env:P"}},
            {"name": "bw-token", "provider": "bandwidth", "tokens": ["env:T1", "env:T2"],
             "max_body_bytes": 100},
        ]}, environ={"P": "pw", "T1": "first-token", "T2": "second-token"})
    service = Service(settings)
    return TestClient(create_app(service), client=("10.9.0.1", 5000)), service


def test_accepted_postback_answers_after_storing(tmp_path: Path) -> None:
    """An authentic postback gets 200 with its raw_id, and the row is in the spool."""
    client, service = make(tmp_path)
    with client:
        resp = client.post("/hooks/bw", content=BODY, headers=AUTH)
        assert resp.status_code == 200
        assert resp.json() == {"status": "accepted", "raw_id": 1}
        (row,) = list(service.spool.select())
        assert row.body == BODY
        assert dict(row.headers).get("authorization") is None


def test_unknown_source_is_404_with_json_error(tmp_path: Path) -> None:
    """An unknown source gets 404 and a JSON error body."""
    client, service = make(tmp_path)
    with client:
        resp = client.post("/hooks/nope", content=BODY, headers=AUTH)
        assert resp.status_code == 404
        assert resp.json()["error"] == "unknown_source"
        token_on_basic = client.post("/hooks/bw/sometoken", content=BODY, headers=AUTH)
        assert token_on_basic.status_code == 404
        assert service.spool.stats().total == 0


def test_body_limits(tmp_path: Path) -> None:
    """Bodies over the limit get 413, by declared length or by what is streamed."""
    client, service = make(tmp_path)
    with client:
        assert client.post("/hooks/bw", content=b"x" * 5000, headers=AUTH).status_code == 413
        streamed = client.post("/hooks/bw", content=iter([b"x" * 3000, b"y" * 3000]),
                               headers=AUTH)
        assert streamed.status_code == 413
        per_source = client.post("/hooks/bw-token/first-token", content=b"[" + b" " * 200 + b"]")
        assert per_source.status_code == 413
        assert service.spool.stats().total == 0


@pytest.mark.parametrize(("forwarded", "status"), [
    ("198.51.100.7", 200), ("203.0.113.5", 403), ("198.51.100.7, 10.9.3.3", 200),
    ("198.51.100.7, 203.0.113.5", 403), ("2001:db8::1", 200), ("garbage", 403),
])
def test_allowlist_uses_forwarded_for_from_trusted_proxy(tmp_path: Path, forwarded: str,
                                                         status: int) -> None:
    """Behind a trusted proxy, the right-most untrusted X-Forwarded-For hop must be allowed."""
    client, service = make(tmp_path)
    with client:
        resp = client.post("/hooks/bw-ip", content=BODY,
                           headers={**AUTH, "x-forwarded-for": forwarded})
        assert resp.status_code == status
        assert service.spool.stats().total == (1 if status == 200 else 0)


def test_forwarded_for_ignored_from_untrusted_peer(tmp_path: Path) -> None:
    """A client that is not a trusted proxy cannot claim an allowed address."""
    client, _service = make(tmp_path)
    client = TestClient(client.app, client=("203.0.113.50", 5000))
    with client:
        resp = client.post("/hooks/bw-ip", content=BODY,
                           headers={**AUTH, "x-forwarded-for": "198.51.100.7"})
        assert resp.status_code == 403
        assert resp.json()["error"] == "forbidden"


def test_url_tokens_rotate_and_are_not_stored(tmp_path: Path) -> None:
    """Either configured token is accepted, a wrong one is 401, and the stored path hides it."""
    client, service = make(tmp_path)
    with client:
        assert client.post("/hooks/bw-token/first-token", content=b"[]").status_code == 200
        assert client.post("/hooks/bw-token/second-token", content=b"[]").status_code == 200
        assert client.post("/hooks/bw-token/wrong", content=b"[]").status_code == 401
        assert client.post("/hooks/bw-token", content=b"[]").status_code == 401
        paths = {row.path for row in service.spool.select()}
        assert paths == {"/hooks/bw-token/{token}"}


def test_spool_over_cap_answers_503_with_retry_after(tmp_path: Path) -> None:
    """When the spool is over its size cap the answer is 503 with Retry-After, never 2xx."""
    client, service = make(tmp_path, max_bytes=len(BODY) + 150)
    with client:
        assert client.post("/hooks/bw", content=BODY, headers=AUTH).status_code == 200
        resp = client.post("/hooks/bw", content=BODY, headers=AUTH)
        assert resp.status_code == 503
        assert int(resp.headers["retry-after"]) > 0
        assert resp.json()["error"] == "spool_unavailable"
        assert service.spool.stats().total == 1
        ready = client.get("/readyz")
        assert ready.status_code == 200


def test_health_readiness_and_metrics(tmp_path: Path) -> None:
    """healthz is ok, readyz reports the spool and that Kafka is not configured, metrics count postbacks."""
    client, _ = make(tmp_path)
    with client:
        assert client.get("/healthz").json() == {"status": "ok"}
        client.post("/hooks/bw", content=BODY, headers=AUTH)
        client.post("/hooks/bw", content=BODY, headers=basic("relay", "bad"))
        ready = client.get("/readyz").json()
        assert ready["ready"] is True and ready["pending"] == 1
        assert ready["kafka"].startswith("not configured")
        metrics = client.get("/metrics").text
        assert 'relay_postbacks_total{outcome="accepted",source="bw"} 1.0' in metrics
        assert 'relay_postbacks_total{outcome="unauthenticated",source="bw"} 1.0' in metrics
        assert "relay_spool_pending 1.0" in metrics


def test_get_on_hook_is_405(tmp_path: Path) -> None:
    """Only POST is accepted on hook URLs."""
    client, _ = make(tmp_path)
    with client:
        assert client.get("/hooks/bw").status_code == 405


@pytest.mark.parametrize(("path", "target"), [
    ("/hooks/bw", ("bw", None)), ("/hooks/sky/tok-1", ("sky", "tok-1")), ("/hooks/", None),
    ("/hooks/bw/", None), ("/hooks//tok", None), ("/hooks/a/b/c", None), ("/hooksbw", None),
    ("/healthz", None),
])
def test_hook_path_parses_source_and_token(path: str, target: tuple[str, str | None] | None
                                           ) -> None:
    """Only /hooks/{source} and /hooks/{source}/{token} with non-empty parts are hook paths."""
    assert hook_path(path) == target


@given(st.text(alphabet=st.characters(blacklist_characters="/"), min_size=1),
       st.none() | st.text(alphabet=st.characters(blacklist_characters="/"), min_size=1))
def test_hook_path_round_trips_any_segment(source: str, token: str | None) -> None:
    """Any slash-free source (and token) is read back from the path built of them."""
    path = f"/hooks/{source}" + (f"/{token}" if token is not None else "")
    assert hook_path(path) == (source, token)


def test_post_to_other_paths_falls_through_to_404_or_redirect(tmp_path: Path) -> None:
    """A POST that is not a hook path is answered by the router, and nothing is spooled."""
    client, service = make(tmp_path)
    with client:
        assert client.post("/elsewhere", content=BODY, headers=AUTH).status_code == 404
        assert client.post("/hooks/bw/t/x", content=BODY, headers=AUTH).status_code == 404
        assert service.spool.stats().total == 0


async def test_client_gone_mid_body_stores_nothing_and_answers_nothing(tmp_path: Path) -> None:
    """A client that disconnects before its body is complete gets no answer and no row."""
    _, service = make(tmp_path)
    await service.start()
    try:
        endpoint = create_app(service)
        messages = iter([{"type": "http.request", "body": b"[{", "more_body": True},
                         {"type": "http.disconnect"}])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/hooks/bw", "headers":
                 [(k.lower().encode(), v.encode()) for k, v in AUTH.items()],
                 "query_string": b"", "client": ("10.9.0.1", 5000)}
        await endpoint(scope, receive, send)
        assert sent == []
        assert service.spool.stats().total == 0
    finally:
        await service.stop()


def test_unexpected_error_is_500_with_json_body(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug behind the hook answers 500 with a JSON error (the provider retries) and stores nothing."""
    client, service = make(tmp_path)

    async def broken(*args: object) -> int:
        raise RuntimeError("bug")

    with client:
        monkeypatch.setattr(service, "receive", broken)
        resp = client.post("/hooks/bw", content=BODY, headers=AUTH)
        assert resp.status_code == 500
        assert resp.json() == {"error": "internal", "detail": "internal error"}
        assert service.spool.stats().total == 0
