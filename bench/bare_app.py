"""The baseline of ``bench/ack_bench.py``: a bare Starlette endpoint.

``POST /hooks/{source}`` reads the whole body and answers 200 with a small JSON body of
about the size relay's ack has. No verification, no spool, no metrics. Served by uvicorn
with the same flags ``relay serve`` uses (uvloop, httptools, access log off, one worker)::

    python -m uvicorn bare_app:app --app-dir bench --loop uvloop --http httptools ...
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_ACK = b'{"status":"accepted","raw_id":1234567}'


async def hook(request: Request) -> Response:
    """Read the body, answer 200."""
    await request.body()
    return Response(_ACK, 200, media_type="application/json")


async def healthz(request: Request) -> Response:
    """Liveness, for the bench's start-up wait."""
    return Response(b'{"status":"ok"}', 200, media_type="application/json")


app = Starlette(routes=[
    Route("/hooks/{source}", hook, methods=["POST"]),
    Route("/healthz", healthz, methods=["GET"]),
])  # fmt: skip
