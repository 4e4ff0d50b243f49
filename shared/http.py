"""What every service's HTTP edge shares: the error object, API keys, request logs.

Every error answers ``{"error": {"type", "code", "message", "param", "retryable",
"request_id", ...}}`` with an ``X-Request-Id`` header; bad input never becomes a 500.
Domain errors map to their own status in one handler; a database or broker outage is
a 503 with ``Retry-After``; anything else unhandled is a 500 error object, logged once
with the request id. Bodies over the limit are refused with 413 before parsing and authentication.

Authentication, the same in every service: ``create_app`` puts
``CallerKeys.from_settings(settings)`` on ``app.state.caller_keys``; each service's
``deps.py`` aliases ``Depends(authenticated)`` (any known key → ``Caller``) or
``Depends(require_role("caller"))``. A missing or unknown key is 401; a known key of
another role is 403 ``forbidden``, naming the role needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import importlib.util
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, NodeNotReadyError
from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import _get_api_route_for_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import iter_route_contexts
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import is_transient_db_error
from shared.errors import (
    DomainError,
    ErrorType,
    Forbidden,
    Unauthorized,
    error_type,
    is_retryable,
)
from shared.settings import ServiceSettings

log = structlog.get_logger(__name__)


# A caller's X-Request-Id is echoed when it is a plain token; otherwise we make one.
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
DEFAULT_MAX_BODY_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 5
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being answered (None outside a request)."""
    return _request_id.get()


def error_body(
    status: int, code: str, message: str, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The error object, ``{"error": {"type", "code", "message", "param", "retryable",
    "request_id", ...}}`` (``shared.errors.error_type`` and ``is_retryable``)."""
    error: dict[str, Any] = {
        "type": error_type(status, code),
        "code": code,
        "message": message,
        "param": param,
        "retryable": is_retryable(status, code),
        **extra,
    }
    request_id = current_request_id()
    if request_id is not None:
        error.setdefault("request_id", request_id)
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, code, message, param, **extra), status_code=status, headers=headers
    )


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


def is_outage(exc: BaseException) -> bool:
    """The database or the broker is away or busy: the same request may work later."""
    if is_transient_db_error(exc):
        return True
    return isinstance(exc, KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError)


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors, invalid input and HTTP errors become the error object; the shared
    edge (request ids, body limit, 500/503 as the error object) is installed too."""
    _install_edge(app)

    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        body = exc.to_body()
        if (request_id := current_request_id()) is not None:
            body["error"].setdefault("request_id", request_id)
        return JSONResponse(body, status_code=exc.status)

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
        if isinstance(exc, BodyTooLarge):
            return too_large_response(exc.limit)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=exc.headers)


def install_request_logging(app: FastAPI) -> None:
    """One rich log line per request, with a request id bound for everything it logs."""
    _install_edge(app)
    app.state.log_requests = True


def _install_edge(app: FastAPI) -> None:
    if not getattr(app.state, "edge_installed", False):
        app.state.edge_installed = True
        app.state.log_requests = getattr(app.state, "log_requests", False)
        app.add_middleware(_Edge)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class _Edge:
    """Plain ASGI middleware (not ``@app.middleware``, whose per-request task and
    streams cost more than the rest of a payment request), outside routing and
    authentication:

    - binds ``request_id`` (the caller's well-formed ``X-Request-Id``, else a new one)
      for the request's logs and error objects, and echoes it as ``x-request-id``;
    - refuses a body over the limit with 413: by its ``Content-Length`` before anything
      reads it, or a chunked one as the app reads it, the moment it passes the limit
      (``BodyTooLarge``; never buffered ahead, so a route that authenticates before it
      reads reads nothing of a stranger's body). The limit is the app's settings'
      ``max_body_bytes``, else 64 KiB; a path in ``app.state.body_limits`` or the
      settings' ``body_limits`` has its own, given as the path or as the route's
      template, ``{name}`` standing for one segment;
    - answers an exception nothing handled as the error object: 503 with
      ``Retry-After`` for a database or broker outage, else 500, logged once;
    - logs one line per request (not ``/healthz``) once ``install_request_logging``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        given = (_header(scope, b"x-request-id") or b"").decode("latin-1")
        request_id = given if REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        token = _request_id.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        state = scope["app"].state if "app" in scope else None
        try:
            receive_body = await self._within_limit(scope, receive, send_with_id, state)
            if receive_body is not None:
                await self.app(scope, receive_body, send_with_id)
        except BodyTooLarge as exc:  # reached here only in an app without the handlers
            if response_started:
                raise
            await _too_large(exc.limit, send_with_id)
        except Exception as exc:
            if response_started:
                raise
            await self._failed(exc, send_with_id)
        finally:
            _request_id.reset(token)
            if getattr(state, "log_requests", False) and scope["path"] != "/healthz":
                log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )

    @staticmethod
    def _limit(scope: Scope, state: Any) -> int:
        settings = getattr(state, "settings", None)
        path = scope["path"]
        for limits in (getattr(state, "body_limits", None), getattr(settings, "body_limits", None)):
            if not limits:
                continue
            if path in limits:
                return int(limits[path])
            for template, limit in limits.items():
                pattern = _path_template(template)
                if pattern is not None and pattern.fullmatch(path):
                    return int(limit)
        return int(getattr(settings, "max_body_bytes", DEFAULT_MAX_BODY_BYTES))

    async def _within_limit(
        self, scope: Scope, receive: Receive, send: Send, state: Any
    ) -> Receive | None:
        """``receive`` for the app, or None once a 413 was sent."""
        limit = self._limit(scope, state)
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                response = error_response(400, "invalid_request", "bad Content-Length header")
                await response({"type": "http"}, _no_body, send)
                return None
            if int(declared) <= limit:
                return receive
            await _too_large(limit, send)
            return None
        if _header(scope, b"transfer-encoding") is None:
            return receive  # no body
        size = 0  # chunked: counted as the app reads it, nothing read ahead

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    raise BodyTooLarge(limit)
            return message

        return counted

    @staticmethod
    async def _failed(exc: Exception, send: Send) -> None:
        if is_outage(exc):
            log.warning("http_dependency_unavailable", error=repr(exc))
            response = error_response(
                503,
                "service_unavailable",
                "a database or broker this service needs is not answering; retry after"
                f" {RETRY_AFTER_SECONDS} seconds",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        else:
            log.exception("http_unhandled_error")
            response = error_response(
                500,
                "internal_error",
                "something went wrong on our side; retry later, and quote the request_id"
                " if it keeps failing",
            )
        await response({"type": "http"}, _no_body, send)


@functools.lru_cache(maxsize=64)
def _path_template(template: str) -> re.Pattern[str] | None:
    """``/v1/days/{day}/x`` as a pattern, ``{day}`` one path segment; None for a path
    without a ``{name}`` in it."""
    parts = re.split(r"(\{[^/{}]+\})", template)
    if len(parts) == 1:
        return None
    return re.compile("".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts))


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


class BodyTooLarge(StarletteHTTPException):
    """A chunked body passed its path's limit while the app read it (``_Edge``). An
    HTTP exception, so FastAPI's own body reading lets it through as it is."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit


def too_large_response(limit: int) -> JSONResponse:
    return error_response(
        413,
        "request_too_large",
        f"the request body is larger than {limit} bytes; send at most {limit} bytes",
        headers={"Connection": "close"},
        max_bytes=limit,
    )


async def _too_large(limit: int, send: Send) -> None:
    await too_large_response(limit)({"type": "http"}, _no_body, send)


HEALTHZ_TIMEOUT_SECONDS = 2.0
BROKER_TIMEOUT_SECONDS = 1.0
BROKER_CACHE_SECONDS = 1.0

Check = Callable[[], Awaitable[None]]


def add_healthz(
    app: FastAPI,
    ping: Check | None = None,
    *,
    checks: Mapping[str, Check] | None = None,
) -> None:
    """The probes, the Kubernetes convention; none authenticates or logs a line.

    * ``GET /livez``: ``{"status": "alive"}`` while the process serves; no I/O.
    * ``GET /readyz``: ``{"status": "ready", "checks": {...}}`` when every check passes,
      else 503 ``not_ready`` naming the ``failed`` checks. The checks: ``database``
      (``ping``, bounded 2 s), ``broker`` (a TCP connect to
      ``app.state.settings.kafka_bootstrap`` when the app has one, bounded 1 s and
      cached 1 s so probes cannot load the broker), ``workers`` (``app.state.workers``,
      set by ``shared.runtime.serve``: none crashed or stopped) and any of ``checks``
      (e.g. a development gateway's ``store``).
    * ``GET /healthz``: as before, ``{"status": "ok"}`` once ``ping`` answers (bounded
      2 s); a ping that fails or times out is a 503 with ``Retry-After``.
    """
    broker = BrokerProbe()

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        if ping is not None:
            await asyncio.wait_for(ping(), HEALTHZ_TIMEOUT_SECONDS)
        return {"status": "ok"}

    @app.get("/livez", include_in_schema=False)
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", include_in_schema=False, response_model=None)
    async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
        state = request.app.state
        named: dict[str, Check] = {}
        if ping is not None:
            named["database"] = ping
        bootstrap = getattr(getattr(state, "settings", None), "kafka_bootstrap", None)
        if isinstance(bootstrap, str) and bootstrap:
            named["broker"] = lambda: broker.check(bootstrap)
        named.update(checks or {})
        results = dict(
            zip(named, await asyncio.gather(*(_outcome(c) for c in named.values())), strict=True)
        )
        workers = getattr(state, "workers", None)
        if workers is not None:
            down = workers.problems()
            results["workers"] = (
                "ok" if not down else ", ".join(f"{n} {s}" for n, s in sorted(down.items()))
            )
        failed = [name for name, outcome in results.items() if outcome != "ok"]
        if not failed:
            return {"status": "ready", "checks": results}
        return error_response(
            503,
            "not_ready",
            f"not ready: {', '.join(failed)} failing; retry after {RETRY_AFTER_SECONDS} seconds",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            failed=failed,
            checks=results,
        )


async def _outcome(check: Check) -> str:
    """``"ok"``, or what went wrong (bounded by ``HEALTHZ_TIMEOUT_SECONDS``)."""
    try:
        await asyncio.wait_for(check(), HEALTHZ_TIMEOUT_SECONDS)
    except TimeoutError:
        return f"no answer within {HEALTHZ_TIMEOUT_SECONDS:g} s"
    except Exception as exc:
        return type(exc).__name__ + (f": {exc}" if str(exc) else "")
    return "ok"


class BrokerProbe:
    """Is a Kafka bootstrap address accepting connections? A TCP connect to each
    ``host:port`` in turn (no SASL, no request: nothing for the broker to do),
    bounded by ``BROKER_TIMEOUT_SECONDS``; one answer serves every probe for
    ``BROKER_CACHE_SECONDS``, and concurrent probes share one attempt."""

    def __init__(self, *, cache_seconds: float = BROKER_CACHE_SECONDS) -> None:
        self._cache_seconds = cache_seconds
        self._lock = asyncio.Lock()
        self._last: tuple[float, str, Exception | None] | None = None

    async def check(self, bootstrap: str) -> None:
        async with self._lock:
            now = time.monotonic()
            if (
                self._last is None
                or self._last[1] != bootstrap
                or now - self._last[0] >= self._cache_seconds
            ):
                self._last = (now, bootstrap, await _connect_any(bootstrap))
            error = self._last[2]
        if error is not None:
            raise error


async def _connect_any(bootstrap: str) -> Exception | None:
    """None once one address of ``bootstrap`` accepts a TCP connection; else the error."""
    error: Exception = ConnectionError(f"no broker address in {bootstrap!r}")
    for address in (a.strip() for a in bootstrap.split(",")):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            error = ValueError(f"broker address {address!r} is not host:port")
            continue
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port)), BROKER_TIMEOUT_SECONDS
            )
        except (OSError, TimeoutError) as exc:
            error = ConnectionError(f"broker {address} unreachable ({type(exc).__name__})")
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
    return error


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


# ---------------------------------------------------------------------------
# OpenAPI and /docs: the real error object and security scheme, no outside CDN
# ---------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """The error object every service answers with, 5xx included (Stripe's shape)."""

    model_config = ConfigDict(extra="allow")

    type: ErrorType = Field(description="what kind of failure (shared.errors.error_type)")
    code: str = Field(description="stable machine code, e.g. invalid_request, not_found")
    message: str = Field(description="what went wrong and what to do next")
    param: str | None = Field(description="the offending field or header, when one is")
    retryable: bool = Field(description="the same request (same Idempotency-Key) may succeed")
    request_id: str | None = Field(None, description="echoed as X-Request-Id; quote it")


class ErrorResponse(BaseModel):
    """``{"error": {...}}``; some codes add fields (e.g. 413 ``max_bytes``)."""

    error: ErrorDetail


BEARER_SCHEME = "bearer"
DOCS_STATIC = "/docs/static"
_ERROR_TEXT: Mapping[int, str] = {
    400: "invalid_request (or invalid_json): the field named by param is wrong; fix it",
    401: "authentication: no key, or a key not recognised",
    403: "authentication (forbidden): the key's role may not do this",
    404: "not_found: no such resource, or another caller's",
    409: "a conflict with the resource's state or an Idempotency-Key reuse",
    410: "gone: the code or resource expired",
    413: "request_too_large: the body is over the limit (max_bytes)",
    422: "a rule said no (the code names which)",
    429: "rate_limit: too many requests; retry after Retry-After seconds",
    500: "api (internal_error): our fault; retry later, quote the request_id",
    503: "upstream (service_unavailable): a database, broker or upstream is away; retry"
    " after Retry-After seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def _depends_on(dependant: Dependant, target: Callable[..., Any]) -> bool:
    return any(d.call is target or _depends_on(d, target) for d in dependant.dependencies)


def _reads_bearer(dependant: Dependant) -> bool:
    return any(isinstance(d.call, HTTPBearer) or _reads_bearer(d) for d in dependant.dependencies)


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERROR_TEXT.get(status, "the error object"),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if status in (429, 503):
        response["headers"] = _RETRY_AFTER
    return response


def _document_operation(route: Any, operation: dict[str, Any], outage: bool) -> None:
    declared = {int(s) for s in route.responses if str(s).isdigit() and int(s) >= 400}
    statuses = declared | {400, 500} | ({503} if outage else set())
    if operation.get("requestBody"):
        statuses.add(413)
    if route.dependant.path_params:
        statuses.add(404)
    if _depends_on(route.dependant, authenticated):
        statuses |= {401, 403}
        operation["security"] = [{BEARER_SCHEME: []}]
    elif _reads_bearer(route.dependant):
        statuses.add(401)  # an optional key: a wrong one is still refused
        operation["security"] = [{}, {BEARER_SCHEME: []}]
    else:
        operation["security"] = []  # public: no key
    responses = operation.setdefault("responses", {})
    if "422" in responses and 422 not in declared:
        del responses["422"]  # FastAPI's validation schema: we answer 400 instead
    for status in sorted(statuses):
        responses[str(status)] = _error_response(status)


def _api_routes(app: FastAPI) -> Iterator[Any]:  # APIRoute-like (FastAPI's own view)
    """Every route of the document, as FastAPI itself walks them (included routers
    flattened, with their prefixes, dependencies and responses)."""
    for context in iter_route_contexts(app.routes):
        route = _get_api_route_for_openapi(context)
        if route is not None and route.include_in_schema:
            yield route


def _rewrite(app: FastAPI, spec: dict[str, Any], *, outage: bool) -> None:
    components = spec.setdefault("components", {})
    components["securitySchemes"] = {
        BEARER_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "Authorization: Bearer <API key> (caller, bureau or operator)",
        }
    }
    _, defs = models_json_schema(
        [(ErrorResponse, "validation")], ref_template="#/components/schemas/{model}"
    )
    schemas = components.setdefault("schemas", {})
    schemas.update(defs["$defs"])
    for route in _api_routes(app):
        for method in route.methods or ():
            operation = spec["paths"].get(route.path_format, {}).get(method.lower())
            if operation is not None:
                _document_operation(route, operation, outage)
    text = json.dumps(spec)
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in text:
            schemas.pop(unused, None)


def document_api(app: FastAPI, *, outage: bool = True) -> None:
    """Make ``app``'s OpenAPI tell the truth and serve ``/docs`` from this host.

    The document: every operation's error responses use ``ErrorResponse`` (400 for bad
    input instead of FastAPI's 422 ``HTTPValidationError``; 401/403 with a key; 404
    with a path parameter; 413 with a body; 500, and 503 when ``outage``; and what the
    route declares), the one ``bearer`` security scheme (HTTP bearer, the API key) on
    every route that takes a key (optional where the key only widens what is shown)
    and ``security: []`` on public ones. ``/docs`` is Swagger UI from the
    ``fastapi-offline`` package's files under ``/docs/static``: no outside host. Build
    the app with ``docs_url=None, redoc_url=None``.
    """
    original = app.openapi
    done: list[dict[str, Any]] = []  # the document last rewritten (FastAPI caches it)

    def openapi() -> dict[str, Any]:
        spec = original()
        if not done or done[0] is not spec:
            _rewrite(app, spec, outage=outage)
            done[:] = [spec]
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(DOCS_STATIC, StaticFiles(directory=_swagger_static()), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io
        )


def _swagger_static() -> str:
    """Swagger UI 5's files as the ``fastapi-offline`` package ships them."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        raise RuntimeError("fastapi-offline is not installed: pip install -e .")
    return str(Path(spec.origin).parent / "static")
