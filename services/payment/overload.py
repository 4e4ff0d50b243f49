"""Load shedding at the door (issue 13 "Overload"): above capacity, say so at once.

In flight means the whole pipeline, not the HTTP server: the payments accepted and not
yet decided by risk or booked by the ledger (``requested``, ``authorized``). While that
count is at ``PAYMENT_OVERLOAD_MAX_IN_FLIGHT`` or above, ``POST /v1/payments`` answers
503 ``overloaded`` (retryable, ``Retry-After``) before reading anything else, so a
caller learns in milliseconds instead of queueing, and what was accepted still
completes within the bound's worth of time. Payments waiting for their payer
(``requires_verification``) or for the bank (``awaiting_bank``, paced by the bank
worker) are not the pipeline's backlog and do not count.

The count is cheap: at most ``max_in_flight`` rows of the partial index
``payments_unfinished``, read at most once per ``interval`` by one request at a time;
the others use the last count.
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
IN_FLIGHT_SQL = (
    "SELECT count(*) FROM (SELECT 1 FROM payments"
    " WHERE status IN ('requested', 'authorized') LIMIT $1) AS in_flight"
)


class Overloaded(DomainError):
    """The pipeline holds as many payments as it may: try again after ``retry_after``."""

    status = 503
    code = "overloaded"


class OverloadGuard:
    """Counts the payments in flight (at most every ``interval`` seconds) and refuses
    new ones while the count is at ``max_in_flight`` or above; 0 turns it off."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_in_flight: int,
        interval: float,
        retry_after: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self.max_in_flight = max_in_flight
        self.interval = interval
        self.retry_after = retry_after
        self._clock = clock
        self._counted_at = -math.inf
        self._in_flight = 0
        self._shedding = False
        self._lock = asyncio.Lock()

    @property
    def in_flight(self) -> int:
        """The last count (capped at ``max_in_flight``)."""
        return self._in_flight

    async def check(self) -> None:
        """Raise ``Overloaded`` while the pipeline is full."""
        if self.max_in_flight <= 0:
            return
        if self._clock() - self._counted_at >= self.interval and not self._lock.locked():
            async with self._lock:
                self._in_flight = int(await self._pool.fetchval(IN_FLIGHT_SQL, self.max_in_flight))
                self._counted_at = self._clock()
            shedding = self._in_flight >= self.max_in_flight
            if shedding != self._shedding:  # one line per change, not one per refusal
                self._shedding = shedding
                log.warning(
                    "payment_overload_shedding" if shedding else "payment_overload_cleared",
                    in_flight=self._in_flight,
                    max_in_flight=self.max_in_flight,
                )
        if self._in_flight >= self.max_in_flight:
            raise Overloaded(
                f"{self._in_flight} payments are being processed, the most this service"
                f" takes at once; send the same request again after {self.retry_after}"
                " seconds",
                details={"retry_after": self.retry_after},
            )
