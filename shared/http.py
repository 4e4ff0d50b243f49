"""What every service's HTTP edge shares: the error object, API keys, request logs.

Every 4xx answers ``{"error": {"code", "message", "param", ...}}``; bad input never
becomes a 500. Domain errors map to their own status in one handler.

Authentication, the same in every service: ``create_app`` puts
``CallerKeys.from_settings(settings)`` on ``app.state.caller_keys``; each service's
``deps.py`` aliases ``Depends(authenticated)`` (any known key → ``Caller``) or
``Depends(require_role("caller"))``. A missing or unknown key is 401; a known key of
another role is 403 ``forbidden``, naming the role needed.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import structlog
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import DomainError, Forbidden, Unauthorized
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


def error_response(
    status: int, code: str, message: str, param: str | None = None, **extra: Any
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message, "param": param, **extra}
    return JSONResponse({"error": body}, status_code=status)


def _param_of(loc: Sequence[Any]) -> str | None:
    """``("body", "lines", 3, "amount")`` → ``lines[3].amount``."""
    param = ""
    for part in loc:
        if part in ("body", "query", "path", "header"):
            continue
        if isinstance(part, int):
            param += f"[{part}]"
        else:
            param += f".{part}" if param else str(part)
    return param or None


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


def add_healthz(app: FastAPI, ping: Callable[[], Awaitable[None]] | None = None) -> None:
    """``GET /healthz``: ``{"status": "ok"}`` once ``ping`` (e.g. ``SELECT 1``) answers."""

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        if ping is not None:
            await ping()
        return {"status": "ok"}


Role = Literal["caller", "bureau", "operator"]
ROLE_PREFIX: Mapping[Role, str] = {
    "caller": "caller_",
    "bureau": "bureau_",
    "operator": "operator_",
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: named by a short hash of its key (never the key), its role, and
    for a bureau key the region it acts for."""

    id: str
    role: Role
    region: str | None = None


class CallerKeys:
    """Bearer API keys of every role. A caller is named by a short hash of its key.

    ``caller_of`` is the caller-role check every service used first (a caller key →
    its id); ``authenticate`` knows every role.
    """

    def __init__(
        self,
        keys: Sequence[str],
        *,
        bureau_keys: Mapping[str, str] | None = None,
        operator_keys: Sequence[str] = (),
    ) -> None:
        self._keys: list[tuple[bytes, Role, str | None]] = [
            (k.encode(), "caller", None) for k in keys
        ]
        self._keys += [(k.encode(), "bureau", r) for k, r in (bureau_keys or {}).items()]
        self._keys += [(k.encode(), "operator", None) for k in operator_keys]

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> CallerKeys:
        return cls(
            settings.api_key_list(),
            bureau_keys=settings.bureau_key_map(),
            operator_keys=settings.operator_key_list(),
        )

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller behind an ``Authorization: Bearer <key>`` header, or 401."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthorized(
                "send your API key as 'Authorization: Bearer <key>'", param="Authorization"
            )
        presented = authorization[7:].strip().encode()
        found: Caller | None = None
        for key, role, region in self._keys:  # every key compared: no timing on the match
            if hmac.compare_digest(presented, key):
                found = Caller(
                    ROLE_PREFIX[role] + hashlib.sha256(key).hexdigest()[:16], role, region
                )
        if found is None:
            raise Unauthorized("API key not recognised; check the key", param="Authorization")
        return found

    def caller_of(self, authorization: str | None) -> str:
        """The id of a caller-role key (401 unknown, 403 another role)."""
        return require(self.authenticate(authorization), "caller").id


def require(caller: Caller, *roles: Role) -> Caller:
    """``caller`` if it has one of ``roles``; else 403 naming the role needed."""
    if caller.role not in roles:
        needed = " or ".join(roles)
        raise Forbidden(
            f"this call needs a key with the {needed} role; this key has the {caller.role} role",
            param="Authorization",
            details={"required_role": roles[0] if len(roles) == 1 else list(roles)},
        )
    return caller


_BEARER = HTTPBearer(auto_error=False, description="API key (caller, bureau or operator role)")


async def authenticated(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Caller:
    """Dependency: the caller of any role, from ``request.app.state.caller_keys``."""
    keys: CallerKeys = request.app.state.caller_keys
    header = f"Bearer {credentials.credentials}" if credentials is not None else None
    caller = keys.authenticate(header)
    structlog.contextvars.bind_contextvars(caller=caller.id)
    return caller


def require_role(*roles: Role) -> Callable[[Caller], Awaitable[Caller]]:
    """Dependency factory: the authenticated caller, required to have one of ``roles``."""

    async def dependency(caller: Annotated[Caller, Depends(authenticated)]) -> Caller:
        return require(caller, *roles)

    return dependency
