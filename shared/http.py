"""What every service's HTTP edge shares: the error object, caller keys, request logs.

Every 4xx answers ``{"error": {"code", "message", "param", ...}}``; bad input never
becomes a 500. Domain errors map to their own status in one handler.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import DomainError, Unauthorized

log = structlog.get_logger(__name__)


def error_response(
    status: int, code: str, message: str, param: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "param": param, **extra}
    return JSONResponse({"error": body}, status_code=status)


def _param_of(loc: Sequence[Any]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        return JSONResponse(exc.to_body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = _param_of(first.get("loc", ()))
        what = first.get("msg", "invalid value")
        if first.get("type") == "json_invalid":
            return error_response(400, "invalid_json", "the body is not valid JSON; send JSON")
        message = f"{param or 'request'}: {what}; fix this field and send again"
        return error_response(400, "invalid_request", message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))


def install_request_logging(app: FastAPI) -> None:
    """One rich log line per request, with a request id bound for everything it logs."""
    app.add_middleware(_RequestLogging)


class _RequestLogging:
    """Plain ASGI middleware (not ``@app.middleware``, whose per-request task and
    streams cost more than the rest of a payment request): binds ``request_id`` in the
    request's own context, echoes it as ``x-request-id`` and logs the outcome."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["path"] != "/healthz":
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )


def add_healthz(app: FastAPI, check: Callable[[], Awaitable[None]] | None = None) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        if check is not None:
            await check()
        return {"status": "ok"}


class CallerKeys:
    """Bearer caller keys. A caller is named by a short hash of its key, never the key."""

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [k.encode() for k in keys]

    def caller_of(self, authorization: str | None) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(
                "send your caller key as 'Authorization: Bearer <key>'", param="Authorization"
            )
        presented = authorization[7:].strip().encode()
        for key in self._keys:
            if hmac.compare_digest(presented, key):
                return "caller_" + hashlib.sha256(key).hexdigest()[:16]
        raise Unauthorized("caller key not recognised; check the key", param="Authorization")
