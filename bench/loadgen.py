"""A lean open-loop HTTP load generator (bench/payments.py, bench/peer_bare.py).

Open loop: request ``i`` is due at ``t0 + i / rate`` whatever the server does, and its
latency counts from that due time, so a slow server cannot hide its queue behind a
client that waits (coordinated omission). A request that times out is sent again
under the same ``Idempotency-Key`` (the API answers a replay with the first answer).

The client is a few lines of HTTP/1.1 over asyncio streams with keep-alive
connections (no httpx: its per-request cost would dominate the generator's CPU,
which the benchmark reports as its own line).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one host; JSON in, status + bytes out."""

    def __init__(self, url: str, *, max_connections: int = 512) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)
        self.opened = 0

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        async with self._slots:
            while self._idle:  # a kept-alive connection the server may have closed idle
                reader, writer = self._idle.pop()
                try:
                    return await self._exchange(reader, writer, method, path, headers, body)
                except (asyncio.IncompleteReadError, ConnectionError):
                    continue
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.opened += 1
            return await self._exchange(reader, writer, method, path, headers, body)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes | None,
    ) -> tuple[int, dict[str, str], bytes]:
        try:
            lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            if body is not None:
                lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            got: dict[str, str] = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    got[name.strip().lower()] = value.strip()
            data = await reader.readexactly(int(got.get("content-length", "0")))
        except BaseException:
            writer.close()  # a half-read answer: never reuse this connection
            raise
        if got.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, got, data

    async def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        self._idle.clear()


@dataclass
class Outcome:
    index: int
    due: float  # perf_counter time the request was scheduled for
    status: int = 0  # last answer's status; 0: none (every try timed out or failed)
    answered: float = 0.0  # perf_counter time of the final answer
    attempts: int = 0
    body: bytes = b""


@dataclass
class OpenLoopResult:
    rate: float
    outcomes: list[Outcome]
    started: float
    sent_s: float  # from the first due time to the last one
    errors: dict[str, int] = field(default_factory=dict)

    def by_status(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        return counts

    def latencies_ms(self, status: int | None = None) -> list[float]:
        return [
            (o.answered - o.due) * 1000
            for o in self.outcomes
            if o.status and (status is None or o.status == status)
        ]


async def open_loop(
    pool: HttpPool,
    *,
    count: int,
    rate: float,
    path: str,
    make_request: Callable[[int], tuple[dict[str, str], bytes]],
    timeout: float = 10.0,  # noqa: ASYNC109 - per try, then the same request again
    retries: int = 3,
) -> OpenLoopResult:
    """Send ``count`` POSTs to ``path`` at ``rate`` per second, open loop.

    ``make_request(i)`` gives request ``i``'s headers (with its Idempotency-Key) and
    body, made once: a retry after a timeout sends exactly the same request."""
    outcomes = [Outcome(i, 0.0) for i in range(count)]
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def one(o: Outcome, headers: dict[str, str], body: bytes) -> None:
        for _ in range(retries + 1):
            o.attempts += 1
            try:
                o.status, _, o.body = await asyncio.wait_for(
                    pool.request("POST", path, headers, body), timeout
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
            else:
                o.answered = time.perf_counter()
                return
        o.answered = time.perf_counter()

    t0 = time.perf_counter() + 0.05
    for o in outcomes:
        headers, body = make_request(o.index)
        o.due = t0 + o.index / rate
        ahead = o.due - time.perf_counter()
        if ahead > 0.001:
            await asyncio.sleep(ahead)
        task = asyncio.create_task(one(o, headers, body))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    sent_s = time.perf_counter() - t0
    while tasks:
        await asyncio.gather(*list(tasks))
    return OpenLoopResult(rate, outcomes, t0, sent_s, errors)


def quantiles_ms(values: list[float]) -> str:
    if len(values) < 2:
        return f"{len(values)} values"
    q = statistics.quantiles(values, n=100, method="inclusive")
    return f"p50 {q[49]:.0f} ms, p90 {q[89]:.0f} ms, p99 {q[98]:.0f} ms, max {max(values):.0f} ms"


def json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
