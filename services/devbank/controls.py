"""Development controls: make the bank decline, answer late, or go away for a while.

``POST /control`` sets them; they live in memory (a restart clears them).

* ``decline_next``: the next N new debits are declined (``declined_by_bank``).
* ``delay_ms``: every answer (not ``/control`` or ``/healthz``) waits that long *after*
  the operation is booked, as a slow bank does: a caller that gives up may still
  have been debited.
* ``unavailable_for_s``: the listening socket is closed and open connections are shut,
  so callers get "connection refused" (not an HTTP error) until it reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import datetime, timedelta
from typing import Protocol

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ValidationFailed
from shared.money import utcnow

log = structlog.get_logger(__name__)

UNDELAYED_PATHS = frozenset({"/control", "/healthz"})


class Listener(Protocol):
    """What can stop and restart accepting connections (the HTTP server)."""

    async def stop_listening(self) -> None: ...

    async def start_listening(self) -> None: ...


class Controls:
    """The current settings; ``take_decline`` is called from the store's thread."""

    def __init__(self, listener: Listener | None = None) -> None:
        self.listener = listener
        self.delay_ms = 0
        self.unavailable_until: datetime | None = None
        self._decline_next = 0
        self._lock = threading.Lock()
        self._outage: asyncio.Task[None] | None = None

    @property
    def decline_next(self) -> int:
        return self._decline_next

    def set_decline_next(self, count: int) -> None:
        with self._lock:
            self._decline_next = count

    def take_decline(self) -> bool:
        """True (and one fewer left) when the next debit is to be declined."""
        with self._lock:
            if self._decline_next <= 0:
                return False
            self._decline_next -= 1
            return True

    def snapshot(self) -> dict[str, object]:
        until = self.unavailable_until
        return {
            "decline_next": self.decline_next,
            "delay_ms": self.delay_ms,
            "unavailable_until": until.isoformat().replace("+00:00", "Z") if until else None,
        }

    def update(
        self, decline_next: int | None, delay_ms: int | None, unavailable_for_s: float | None
    ) -> bool:
        """Apply what was sent (None: unchanged). True when an outage is asked for:
        then ``begin_outage`` closes the door (once the answer is out)."""
        if unavailable_for_s is not None and self.listener is None:
            raise ValidationFailed(
                "this bank runs in-process, without a server of its own: it cannot go away",
                param="unavailable_for_s",
            )
        if decline_next is not None:
            self.set_decline_next(decline_next)
        if delay_ms is not None:
            self.delay_ms = delay_ms
        if unavailable_for_s is None:
            return False
        # Extends an outage under way (a kept-alive connection may still ask).
        self.unavailable_until = utcnow() + timedelta(seconds=unavailable_for_s)
        return True

    async def begin_outage(self) -> None:
        if self._outage is not None and not self._outage.done():
            return
        if self.listener is not None:
            await self.listener.stop_listening()
        log.info("bank_unavailable", until=self.snapshot()["unavailable_until"])
        self._outage = asyncio.create_task(self._reopen_later(), name="bank-outage")

    async def _reopen_later(self) -> None:
        while self.unavailable_until is not None:
            left = (self.unavailable_until - utcnow()).total_seconds()
            if left <= 0:
                break
            await asyncio.sleep(left)
        while self.listener is not None:
            try:
                await self.listener.start_listening()
                break
            except OSError as exc:  # the port is briefly held elsewhere: try again
                log.warning("bank_reopen_failed", error=str(exc))
                await asyncio.sleep(0.2)
        self.unavailable_until = None
        log.info("bank_available")

    async def close(self) -> None:
        if self._outage is not None:
            self._outage.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._outage


class DelayAnswers:
    """Plain ASGI middleware: holds each answer back by ``delay_ms`` once the app has
    produced it (so the booking is already committed when the wait starts)."""

    def __init__(self, app: ASGIApp, controls: Controls) -> None:
        self.app = app
        self.controls = controls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNDELAYED_PATHS:
            await self.app(scope, receive, send)
            return

        async def send_late(message: Message) -> None:
            if message["type"] == "http.response.start" and self.controls.delay_ms > 0:
                await asyncio.sleep(self.controls.delay_ms / 1000)
            await send(message)

        await self.app(scope, receive, send_late)
