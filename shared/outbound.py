"""A lean outbound HTTP/1.1 client for the hot paths that POST JSON: ``JsonPoster`` to
one origin (the SMS provider), ``Origins`` to many (the callers' webhook endpoints).

httpx costs about half a millisecond of CPU per request (its transport layers, anyio
streams, connection-expiry checks, cookies, a Request and a Response model): under
load that was the largest part of notify's CPU per payment, more than the POST it
carried, and the largest part of payment's when webhooks were on. ``JsonPoster`` does
what the SMS sender and the webhook worker need and nothing else: a JSON body out (with
the caller's own headers, a webhook's signature), a status and the body back, over
kept-alive connections to one origin.

What it keeps of a real client:

* **Bounded connections**, reused (keep-alive); at most ``max_connections`` requests
  in flight, the rest wait for a free one.
* **A timeout per request** (connect, send and the whole answer), then
  ``OutboundError`` (``timeout``), never a hang.
* **Framing by the answer**: ``Content-Length``, ``Transfer-Encoding: chunked``, or
  until the server closes; ``Connection: close`` is honoured; a connection whose
  answer was not read to the end is never reused.
* **A stale kept-alive connection** (the server closed it while idle, so the request
  got no answer byte at all) is retried once on a new connection, as urllib3 and
  httpcore do; a request that got part of an answer is never sent twice by this
  client (the caller's retry policy decides; the SMS sender's ``message_id`` makes a
  repeat harmless anyway).

``https://`` origins go over TLS with the system's trust store and host-name checks
(``ssl.create_default_context``), as a real SMS provider requires. No redirects,
cookies, proxies or HTTP/2: a caller that needs them uses httpx.
With tracing on (``shared.tracing``) each request is a client span whose context goes
out in ``traceparent``, as the httpx instrumentation does; off, it costs one check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace

from shared import tracing

_MAX_HEAD = 64 * 1024
_MAX_BODY = 4 * 1024 * 1024
_NO_BODY = frozenset({204, 304})
_TRACER = trace.get_tracer(__name__)


class OutboundError(Exception):
    """No usable answer: ``kind`` is ``connect``, ``timeout``, ``closed`` (the
    connection ended mid-answer) or ``protocol`` (an answer that is not HTTP/1.1)."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    status_code: int
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return json.loads(self.body)


class _StaleConnection(Exception):
    """A reused connection answered nothing at all: the server had closed it."""


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class JsonPoster:
    """POSTs JSON bodies to paths of one origin (``http://`` or ``https://host:port``)."""

    def __init__(
        self,
        origin: str,
        *,
        timeout: float,
        max_connections: int = 10,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"JsonPoster speaks http or https to one origin, not {origin!r}")
        self._host = parts.hostname
        self._tls = (tls or ssl.create_default_context()) if parts.scheme == "https" else None
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = f"{self._host}:{self._port}" if parts.port else self._host
        self._base = parts.path.rstrip("/")
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self.opened = 0  # connections opened so far (tests and benchmarks read it)

    async def post(self, path: str, body: Any) -> Reply:
        """POST ``body`` as JSON to ``path`` (under the origin's path); raises
        ``OutboundError`` when no complete answer came."""
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return await self.send(path, payload)

    async def get(self, path: str) -> Reply:
        """GET ``path`` (under the origin's path), a JSON answer expected; raises
        ``OutboundError`` when no complete answer came."""
        return await self._request("GET", path, None, "")

    async def send(
        self, path: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """POST ``payload`` (JSON already encoded) to ``path`` with ``headers`` besides
        the client's own (a webhook's signature); raises ``OutboundError`` when no
        complete answer came and ``ValueError`` for a header that would break the
        request's head."""
        return await self._request("POST", path, payload, _header_lines(headers))

    async def _request(self, method: str, path: str, payload: bytes | None, extra: str) -> Reply:
        if not tracing.enabled():
            return await self._send(method, path, payload, extra)
        with _TRACER.start_as_current_span(
            method,
            kind=trace.SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "server.address": self._host,
                "server.port": self._port,
                "url.path": self._base + path,
            },
        ) as span:
            parent = tracing.traceparent_of()
            if parent:
                extra += f"traceparent: {parent}\r\n"
            reply = await self._send(method, path, payload, extra)
            span.set_attribute("http.response.status_code", reply.status_code)
            return reply

    async def _send(
        self, method: str, path: str, payload: bytes | None, extra_headers: str
    ) -> Reply:
        body = (
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            if payload is not None
            else ""
        )
        head = (
            f"{method} {self._base}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
            f"Accept: application/json\r\n{extra_headers}{body}\r\n"
        ).encode("latin-1")
        request = head + payload if payload is not None else head
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout):
                    while self._idle:
                        conn = self._idle.pop()
                        try:
                            return await self._exchange(conn, request, reused=True)
                        except _StaleConnection:
                            continue
                    return await self._exchange(await self._connect(), request, reused=False)
            except TimeoutError:
                raise OutboundError("timeout", f"no answer within {self._timeout} s") from None

    async def close(self) -> None:
        """Close the idle connections (those in use close when their request ends)."""
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _connect(self) -> _Conn:
        try:
            conn = await asyncio.open_connection(self._host, self._port, ssl=self._tls)
        except OSError as exc:
            raise OutboundError("connect", type(exc).__name__) from exc
        self.opened += 1
        return conn

    async def _exchange(self, conn: _Conn, request: bytes, *, reused: bool) -> Reply:
        reader, writer = conn
        keep = False
        try:
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                got = exc.partial if isinstance(exc, asyncio.IncompleteReadError) else b""
                if reused and not got:
                    raise _StaleConnection from exc
                raise OutboundError("closed", type(exc).__name__) from exc
            except asyncio.LimitOverrunError as exc:
                raise OutboundError("protocol", "answer head too long") from exc
            status, headers, persistent = _parse_head(head)
            try:
                body = b"" if status in _NO_BODY else await _read_body(reader, headers)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                raise OutboundError("closed", type(exc).__name__) from exc
            keep = persistent and (
                status in _NO_BODY
                or "content-length" in headers
                or "chunked" in headers.get("transfer-encoding", "").lower()
            )
            return Reply(status, body)
        finally:
            if keep:
                self._idle.append(conn)
            else:
                writer.close()


class Origins:
    """``JsonPoster``s by origin, for a sender whose targets are many URLs (webhook
    endpoints): each origin keeps its own bounded, kept-alive connections. The least
    recently used origin's connections close when more than ``max_origins`` are open."""

    def __init__(self, *, timeout: float, max_connections: int = 4, max_origins: int = 256) -> None:
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_origins = max_origins
        self._posters: OrderedDict[str, JsonPoster] = OrderedDict()

    async def send(
        self, url: str, payload: bytes, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """POST ``payload`` to ``url`` (``http``/``https``; its path and query are the
        target); ``OutboundError`` or ``ValueError`` as ``JsonPoster.send``."""
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        poster = self._posters.get(origin)
        if poster is None:
            poster = JsonPoster(
                origin, timeout=self._timeout, max_connections=self._max_connections
            )
            self._posters[origin] = poster
            if len(self._posters) > self._max_origins:
                _, oldest = self._posters.popitem(last=False)
                await oldest.close()
        else:
            self._posters.move_to_end(origin)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return await poster.send(target, payload, headers)

    async def close(self) -> None:
        posters, self._posters = list(self._posters.values()), OrderedDict()
        for poster in posters:
            await poster.close()


def _header_lines(headers: Mapping[str, str] | None) -> str:
    if not headers:
        return ""
    lines = []
    for name, value in headers.items():
        if (
            not name.isascii()
            or any(c in name for c in ":\r\n ")
            or any(c in value for c in "\r\n")
        ):
            raise ValueError(f"header {name!r} cannot go into an HTTP/1.1 head")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines)


def _parse_head(head: bytes) -> tuple[int, dict[str, str], bool]:
    """The status, the (lower-cased) headers of an answer's head, and whether the
    server keeps the connection open (HTTP/1.1 unless ``close``; 1.0 only on
    ``keep-alive``)."""
    if len(head) > _MAX_HEAD:
        raise OutboundError("protocol", "answer head too long")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise OutboundError("protocol", "not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    persistent = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return int(code), headers, persistent


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        size_total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise OutboundError("protocol", "bad chunk size") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return b"".join(chunks)
            size_total += size
            if size_total > _MAX_BODY:
                raise OutboundError("protocol", "answer body too long")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > _MAX_BODY:
            raise OutboundError("protocol", "bad Content-Length")
        return await reader.readexactly(int(length))
    parts: list[bytes] = []  # framed by the server closing the connection
    read = 0
    while part := await reader.read(64 * 1024):
        read += len(part)
        if read > _MAX_BODY:
            raise OutboundError("protocol", "answer body too long")
        parts.append(part)
    return b"".join(parts)
