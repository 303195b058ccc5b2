"""The HTTP face of relay: the only module that imports starlette.

Routes::

    POST /hooks/{source}            a provider postback (Basic auth or signature)
    POST /hooks/{source}/{token}    a provider postback authenticated by a URL token
    GET  /healthz                   the process is alive
    GET  /readyz                    the spool takes writes (503 if not); Kafka state
    GET  /metrics                   Prometheus metrics

The hook handler is a few steps: find the source, read the body under its size limit,
hand it to :meth:`relay.service.Service.receive` (allowlist, verification, spool append
awaited on a group commit), answer. Every refusal is a JSON body
``{"error": code, "detail": text}`` with the status the error carries.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.errors import HookError, PayloadTooLarge
from relay.observability import get_logger
from relay.service import Incoming, Service

log = get_logger("relay.app")
JSON = "application/json"


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type=JSON)


async def read_body(request: Request, headers: dict[str, str], limit: int) -> bytes:
    """The request body, or :class:`PayloadTooLarge` as soon as it passes ``limit``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(request: Request) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in request.scope["headers"]}


def _incoming(request: Request, headers: dict[str, str], body: bytes) -> Incoming:
    scope = request.scope
    client = scope.get("client")
    return Incoming(
        source=request.path_params["source"], token=request.path_params.get("token"),
        method=scope["method"], path=scope["path"],
        raw_path=scope.get("raw_path", scope["path"].encode()).decode("latin-1"),
        query=scope.get("query_string", b"").decode("latin-1"), headers=headers, body=body,
        peer=client[0] if client else None, http_version=scope.get("http_version", "1.1"),
    )


def create_app(service: Service) -> Starlette:
    """The ASGI app around a :class:`Service` (started and stopped by the lifespan)."""
    metrics = service.metrics
    accepted = {name: metrics.postbacks.labels(name, "accepted") for name in service.sources}

    async def hook(request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["source"]
        try:
            source = service.source_for(name, request.path_params.get("token"))
            headers = _headers(request)
            body = await read_body(request, headers, source.max_body_bytes)
            raw_id = await service.receive(source, _incoming(request, headers, body))
        except HookError as exc:
            metrics.postbacks.labels(name if name in service.sources else "-", exc.code).inc()
            client = request.scope.get("client")
            log.warning("postback_refused", source=name, status=exc.status, reason=exc.code,
                        detail=exc.detail, peer=client[0] if client else None)
            return _json(exc.status, {"error": exc.code, "detail": exc.detail}, exc.headers())
        accepted[name].inc()
        metrics.ack_seconds.observe(time.perf_counter() - started)
        return _json(source.provider.ack_status, {"status": "accepted", "raw_id": raw_id})

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

    return Starlette(
        routes=[
            Route("/hooks/{source}", hook, methods=["POST"]),
            Route("/hooks/{source}/{token}", hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
