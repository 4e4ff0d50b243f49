"""Load shedding at the door (issue 13 "Overload"): above capacity, say so at once.

In flight means the whole pipeline, not the HTTP server: the payments accepted and not
yet decided by risk or booked by the ledger (``requested``, ``authorized``). While that
count is at ``PAYMENT_OVERLOAD_MAX_IN_FLIGHT`` or above, ``POST /v1/payments`` answers
503 ``overloaded`` (retryable, ``Retry-After``) before reading anything else, so a
caller learns in milliseconds instead of queueing, and what was accepted still
completes within the bound's worth of time. Payments waiting for their payer
(``requires_verification``) or for the bank (``awaiting_bank``, paced by the bank
worker) are not the pipeline's backlog and do not count.

A count alone bounds the queue, not the wait: how many payments one second holds
depends on the machine and on what else runs. ``PAYMENT_OVERLOAD_MAX_WAIT_SECONDS``
adds the wait itself: the door also closes while ``LATE_ENOUGH`` or more in-flight
payments have sat in their current step (``updated_at``) longer than that, so the
bound follows the pipeline's real capacity. A handful, not one: a single payment stuck
on a poisoned event (the stuck-payment sweeper's business) must not close the door.

The count is cheap: at most ``max_in_flight`` rows of the partial index
``payments_unfinished``, oldest first, read at most once per ``interval`` by one
request at a time; the others use the last count.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import asyncpg
import structlog

from shared.errors import DomainError

log = structlog.get_logger(__name__)

# Within payments_unfinished's predicate (migrations/0004), so the index answers.
# The oldest first, so the late ones are among the rows read.
IN_FLIGHT_SQL = (
    "SELECT count(*) AS in_flight,"
    " count(*) FILTER (WHERE updated_at < now() - make_interval(secs => $2)) AS late"
    " FROM (SELECT updated_at FROM payments WHERE status IN ('requested', 'authorized')"
    " ORDER BY updated_at LIMIT $1) AS in_flight"
)
# In-flight payments past the wait bound that close the door (see the docstring).
LATE_ENOUGH = 5
# Rows read when only the wait bound is on (no count bound).
WAIT_SCAN_LIMIT = 1000


class Overloaded(DomainError):
    """The pipeline holds as many payments as it may: try again after ``retry_after``."""

    status = 503
    code = "overloaded"


class OverloadGuard:
    """Counts the payments in flight (at most every ``interval`` seconds) and refuses
    new ones while the count is at ``max_in_flight`` or above, or while ``LATE_ENOUGH``
    of them have waited longer than ``max_wait`` seconds; 0 turns either off."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_in_flight: int,
        interval: float,
        retry_after: int,
        max_wait: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.interval = interval
        self.retry_after = retry_after
        self._clock = clock
        self._counted_at = -math.inf
        self._in_flight = 0
        self._late = 0
        self._shedding = False
        self._lock = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        """The last count (capped at ``max_in_flight``)."""
        return self._in_flight

    def _full(self) -> bool:
        by_count = 0 < self.max_in_flight <= self._in_flight
        return by_count or (self.max_wait > 0 and self._late >= LATE_ENOUGH)

    async def check(self) -> None:
        """Raise ``Overloaded`` while the pipeline is full or late."""
        if self.max_in_flight <= 0 and self.max_wait <= 0:
            return
        if self._clock() - self._counted_at >= self.interval and not self._lock.locked():
            async with self._lock:
                limit = self.max_in_flight if self.max_in_flight > 0 else WAIT_SCAN_LIMIT
                row = await self._pool.fetchrow(IN_FLIGHT_SQL, limit, self.max_wait)
                self._in_flight, self._late = int(row["in_flight"]), int(row["late"])
                self._counted_at = self._clock()
            shedding = self._full()
            if shedding != self._shedding:  # one line per change, not one per refusal
                self._shedding = shedding
                log.warning(
                    "payment_overload_shedding" if shedding else "payment_overload_cleared",
                    in_flight=self._in_flight,
                    max_in_flight=self.max_in_flight,
                    late=self._late,
                    max_wait_seconds=self.max_wait,
                )
        if self._full():
            raise Overloaded(
                f"{self._in_flight} payments are being processed"
                + (
                    f", {self._late} of them waiting longer than {self.max_wait:g} s"
                    if self.max_wait > 0 and self._late >= LATE_ENOUGH
                    else ", the most this service takes at once"
                )
                + f"; send the same request again after {self.retry_after} seconds",
                details={"retry_after": self.retry_after},
            )
