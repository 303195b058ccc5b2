"""The HTTP face of relay: the only module that imports starlette.

Routes::

    POST /hooks/{source}            a provider postback (Basic auth or signature)
    POST /hooks/{source}/{token}    a provider postback authenticated by a URL token
    GET  /healthz                   the process is alive
    GET  /readyz                    the spool takes writes (503 if not); Kafka state
    GET  /metrics                   Prometheus metrics

The hook handler (:class:`HookEndpoint`, a bare ASGI app in front of the Starlette app,
since it is the hot path) is a few steps: find the source, read the body under its size
limit, hand it to :meth:`relay.service.Service.receive` (allowlist, verification, spool
append awaited on a group commit), answer. Every refusal is a JSON body
``{"error": code, "detail": text}`` with the status the error carries; any other request
goes to the Starlette app (health, readiness, metrics, lifespan, 404 and 405).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relay.errors import HookError, PayloadTooLarge
from relay.observability import get_logger
from relay.service import Service
from relay.sources import Source
from relay.verify import Request as Postback

log = get_logger("relay.app")
JSON = "application/json"
_JSON_HEADER = (b"content-type", b"application/json")


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)


def hook_path(path: str) -> tuple[str, str | None] | None:
    """``(source, token)`` of ``/hooks/{source}`` or ``/hooks/{source}/{token}``, else None."""
    if not path.startswith("/hooks/"):
        return None
    parts = path[7:].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 2 and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes | None:
    """The request body, or :class:`PayloadTooLarge` as soon as it passes ``limit``;
    None if the client went away before sending all of it."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # http.disconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_json(send: Send, status: int, body: object,
                    headers: dict[str, str] | None = None) -> None:
    """Answer with a JSON body (and ``headers``)."""
    content = orjson.dumps(body)
    raw_headers = [_JSON_HEADER, (b"content-length", str(len(content)).encode())]
    if headers:
        raw_headers.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                           for k, v in headers.items())
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


def _postback(scope: Scope, token: str | None, headers: dict[str, str], body: bytes) -> Postback:
    """The framework-free request the service verifies and spools."""
    client = scope.get("client")
    raw_path = scope.get("raw_path")
    return Postback(
        scope["method"], raw_path.decode("latin-1") if raw_path is not None else scope["path"],
        scope.get("query_string", b"").decode("latin-1"), headers, body, token,
        scope.get("http_version", "1.1"), client[0] if client else None,
    )


class HookEndpoint:
    """``POST /hooks/...`` as a bare ASGI app: the hot path, without a routing table,
    middleware or request/response objects. Everything else goes to ``fallback``."""

    def __init__(self, service: Service, fallback: ASGIApp) -> None:
        self.service = service
        self.fallback = fallback
        metrics = service.metrics
        self.accepted = {name: metrics.postbacks.labels(name, "accepted")
                         for name in service.sources}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            target = hook_path(scope["path"])
            if target is not None:
                await self.handle(scope, receive, send, *target)
                return
        await self.fallback(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send, name: str,
                     token: str | None) -> None:
        """Find the source, read the body, verify and spool, answer."""
        started = time.perf_counter()
        try:
            source = self.service.source_for(name, token)
            # Header names come in lower case: the ASGI spec asks it of servers, uvicorn
            # (which relay runs under) and httpx's test transport do it, Starlette relies on it.
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            body = await read_body(receive, headers, source.max_body_bytes)
            if body is None:
                return  # nobody is left to answer
            raw_id = await self.service.receive(source, _postback(scope, token, headers, body))
        except HookError as exc:
            await self.refuse(scope, send, name, exc)
            return
        except Exception as exc:  # a bug: the provider retries, the log says why
            log.exception("postback_error", source=name, problem=type(exc).__name__)
            await send_json(send, 500, {"error": "internal", "detail": "internal error"})
            return
        self.accepted[name].inc()
        self.service.metrics.ack_seconds.observe(time.perf_counter() - started)
        await self.ack(send, source, raw_id)

    @staticmethod
    async def ack(send: Send, source: Source, raw_id: int) -> None:
        """The provider's success answer."""
        await send_json(send, source.provider.ack_status, {"status": "accepted", "raw_id": raw_id})

    async def refuse(self, scope: Scope, send: Send, name: str, exc: HookError) -> None:
        """Count, log and answer a refusal with its status and JSON body."""
        known = name if name in self.service.sources else "-"
        self.service.metrics.postbacks.labels(known, exc.code).inc()
        client: Any = scope.get("client")
        log.warning("postback_refused", source=name, status=exc.status, reason=exc.code,
                    detail=exc.detail, peer=client[0] if client else None)
        await send_json(send, exc.status, {"error": exc.code, "detail": exc.detail},
                        exc.headers())


def create_app(service: Service) -> ASGIApp:
    """The ASGI app around a :class:`Service` (started and stopped by the lifespan)."""
    metrics = service.metrics

    async def hook(request: Request) -> Response:
        # Never called: HookEndpoint takes every POST to these paths. The routes are here
        # so that other methods get Starlette's 405 with ``Allow: POST``.
        return Response("Method Not Allowed", 405, headers={"Allow": "POST"})

    async def healthz(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(request: Request) -> Response:
        ready, body = await service.readiness()
        return _json(200 if ready else 503, {"ready": ready, **body})

    async def metrics_endpoint(request: Request) -> Response:
        await service.readiness()  # refreshes the spool gauges
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    rest = Starlette(
        routes=[
            Route("/hooks/{source}", hook, methods=["POST"]),
            Route("/hooks/{source}/{token}", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return HookEndpoint(service, rest)
