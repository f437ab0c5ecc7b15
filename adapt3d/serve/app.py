"""The server application: authentication, body limits, error answers, and the endpoints.

:func:`make_app` builds a FastAPI app around a :class:`~adapt3d.serve.model.ServedModel`. Before
any endpoint runs, :class:`Guard` checks the bearer key (constant-time, every path but
``/healthz``) and the body size (upload endpoints: ``max_upload_bytes``; JSON endpoints: 64 KiB),
so an unauthenticated or oversized request is refused before its body is read. Problems are
answered ``{"detail": "..."}`` with a 4xx status; an unexpected failure in one request is a 500
for that request only — the server keeps serving.
"""

from __future__ import annotations

import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from nnInteractive.inference.remote import _protocol as wire

from adapt3d.errors import Adapt3dError
from adapt3d.serve.model import ServedModel
from adapt3d.serve.protocol import ProtocolError, json_response
from adapt3d.serve.routes import Routes
from adapt3d.serve.sessions import LeaseRegistry, Reaper
from adapt3d.serve.worker import InferenceWorker

log = logging.getLogger(__name__)
UPLOAD_PATHS = frozenset({wire.PATH_SET_IMAGE, wire.PATH_ADD_SCRIBBLE, wire.PATH_ADD_LASSO, wire.PATH_ADD_INITIAL_SEG})
MAX_JSON_BYTES = 64 * 1024


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and policies (the ``adapt3d serve`` options)."""

    api_key: str | None = None
    max_sessions: int = 4
    idle_timeout: float = 600.0
    liveness_timeout: float = 60.0
    sweep_interval: float = 5.0
    max_upload_bytes: int = 1 << 30  # a request body as sent (compressed)
    max_image_bytes: int = 2 << 30  # an array once decompressed
    array_orientation: str = "SAR"


class Guard:
    """ASGI middleware: bearer-key check, then the body read up to its limit and handed on."""

    def __init__(self, app, api_key: str | None, max_upload_bytes: int) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_upload_bytes = max_upload_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        headers = dict(scope["headers"])
        if self.key is not None and path != wire.PATH_HEALTHZ:
            given = headers.get(b"authorization", b"")
            if not given.startswith(b"Bearer "):
                await _refuse(send, 401, "missing bearer token (start the client with the server's API key)")
                return
            if not hmac.compare_digest(given[len(b"Bearer "):], self.key):
                await _refuse(send, 401, "invalid bearer token")
                return
        limit = self.max_upload_bytes if path in UPLOAD_PATHS else MAX_JSON_BYTES
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit():
            await _refuse(send, 400, f"Content-Length {declared.decode(errors='replace')!r} is not a number")
            return
        if int(declared) > limit:
            await _refuse(send, 413, f"request body over the limit of {limit} bytes for {path}")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _refuse(send, 413, f"request body over the limit of {limit} bytes for {path}")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_app(served: ServedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The server for ``served``; sessions, worker and reaper live as long as the app runs."""
    settings = settings or ServeSettings()
    registry = LeaseRegistry(settings.max_sessions, settings.idle_timeout, settings.liveness_timeout)
    worker = InferenceWorker(served)
    reaper = Reaper(registry, settings.sweep_interval)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        reaper.start()
        try:
            yield
        finally:
            reaper.stop()
            registry.clear()
            worker.close()

    app = FastAPI(title="adapt3d nnInteractive-protocol server", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.registry, app.state.served, app.state.settings = registry, served, settings
    Routes(
        served, worker, registry, max_image_bytes=settings.max_image_bytes, array_orientation=settings.array_orientation
    ).register(app)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(_request: Request, exc: ProtocolError):
        return json_response({"detail": exc.detail}, exc.status)

    @app.exception_handler(Adapt3dError)
    async def _input_error(_request: Request, exc: Adapt3dError):
        return json_response({"detail": str(exc)}, 400)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("request failed")
        return json_response({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    app.add_middleware(Guard, api_key=settings.api_key, max_upload_bytes=settings.max_upload_bytes)
    return app
