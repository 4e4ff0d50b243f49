"""Settlement transfers to the bureaus, and the scheduler that closes days.

``TransferSender`` is a worker like payment's bank worker: it leases a due pending
transfer (one autocommitted ``UPDATE … FOR UPDATE SKIP LOCKED`` that pushes
``next_attempt_at`` forward), asks the bank (``POST /transfers`` with the transfer's
stable reference) with no database transaction open, then records the answer. The
bank dedupes on the reference, so a ledger killed between asking and recording asks
again after the lease and hears the same answer: a transfer is made once, and its
arrival (``settlement_arrival``, recording the confirmation time) is booked once, under
the head lock, only while the transfer is still pending. A decline, an error or no
answer leaves it pending, retried with backoff (``transfer_last_error`` shows why).

``ClearingScheduler`` closes every open day with postings once its cut-off passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import httpx
import structlog

from services.ledger import store
from services.ledger.domain.clearing import posting_day
from services.ledger.domain.settlement import Transfer, arrival_entry
from services.ledger.settlement import store as sstore
from services.ledger.settlement.service import SettlementSetup, close_due_days
from shared.outbox import write_outbox
from shared.runtime import PollingWorker

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TransferAnswer:
    status: str  # succeeded | declined | pending
    reason: str | None


class BankTransfers:
    """The bank's transfer API (DESIGN.md: ``POST /transfers``, idempotent by reference)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout)

    async def transfer(self, transfer: Transfer) -> TransferAnswer:
        r = await self._client.post(
            "/transfers",
            json={
                "reference": transfer.reference,
                "to_account": transfer.to_account,
                "amount": transfer.amount,
                "currency": "CNY",
            },
        )
        if r.status_code >= 400:
            raise httpx.HTTPStatusError(
                f"bank answered {r.status_code}: {r.text[:200]}", request=r.request, response=r
            )
        body = r.json()
        return TransferAnswer(str(body.get("status")), body.get("reason"))

    async def close(self) -> None:
        await self._client.aclose()


async def book_arrival(
    pool: asyncpg.Pool, setup: SettlementSetup, reference: str, confirmed_at: datetime
) -> int | None:
    """Book the arrival of transfer ``reference`` once; its journal seq (None when it
    was booked already or is unknown)."""
    async with pool.acquire() as conn, conn.transaction():
        head = await store.load_head(conn, lock=True)
        row = await sstore.transfer_for_update(conn, reference)
        if row is None or row.status == "arrived":
            return None
        now = setup.clock()
        day = posting_day(now, setup.cutoff, await store.last_closed_day(conn))
        entry, envelope = arrival_entry(
            head,
            row.transfer,
            confirmed_at=confirmed_at,
            posted_at=now,
            clearing_day=day,
            signer=setup.signer,
        )
        await store.append_entry(conn, head, entry, envelope.event_id)
        await sstore.mark_arrived(conn, reference, now, entry.seq)
        await write_outbox(conn, setup.ledger_topic, [envelope])
        return entry.seq


class TransferSender(PollingWorker):
    """Worker: asks the bank for every pending transfer until it arrives, one at a
    time; rests ``poll_interval_seconds`` when none is due."""

    name = "transfer_sender"

    def __init__(
        self,
        pool: asyncpg.Pool,
        setup: SettlementSetup,
        bank: BankTransfers,
        *,
        lease_seconds: float = 30.0,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 60.0,
        poll_interval_seconds: float = 0.5,
    ) -> None:
        super().__init__(poll_interval=poll_interval_seconds, batch_size=1)
        self.pool = pool
        self.setup = setup
        self.bank = bank
        self.lease_seconds = lease_seconds
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds

    async def run_once(self) -> int:
        return int(await self.send_one())

    async def send_one(self) -> bool:
        """Ask the bank for one due transfer; False when none is due."""
        row = await sstore.lease_due_transfer(self.pool, self.lease_seconds)
        if row is None:
            return False
        t = row.transfer
        bound = log.bind(reference=t.reference, region=t.region, attempt=row.attempts)
        try:
            answer = await self.bank.transfer(t)
        except (httpx.HTTPError, ValueError) as exc:
            await self._retry(row.attempts, t.reference, f"no answer from the bank: {exc!r}")
            bound.warning("settlement_transfer_unanswered", error=repr(exc))
            return True
        if answer.status == "succeeded":
            seq = await book_arrival(self.pool, self.setup, t.reference, self.setup.clock())
            bound.info("settlement_transfer_arrived", amount=t.amount, seq=seq)
        else:
            why = f"the bank answered {answer.status}" + (
                f": {answer.reason}" if answer.reason else ""
            )
            await self._retry(row.attempts, t.reference, why)
            bound.warning(
                "settlement_transfer_not_done", status=answer.status, reason=answer.reason
            )
        return True

    async def _retry(self, attempts: int, reference: str, why: str) -> None:
        pause = min(self.retry_base_seconds * 2 ** max(attempts - 1, 0), self.retry_max_seconds)
        await sstore.record_transfer_failure(self.pool, reference, why, pause)


class ClearingScheduler(PollingWorker):
    """Worker: closes each clearing day with postings once its cut-off has passed,
    every ``interval_seconds``. At start it looks through the whole journal; then
    only through the last ``look_back_days``."""

    name = "clearing_scheduler"

    def __init__(
        self,
        pool: asyncpg.Pool,
        setup: SettlementSetup,
        interval_seconds: float = 30.0,
        look_back_days: int = 7,
    ) -> None:
        super().__init__(poll_interval=interval_seconds, batch_size=None)
        self.pool = pool
        self.setup = setup
        self.look_back_days = look_back_days
        self._look_back: int | None = None  # the first pass looks through everything

    async def run_once(self) -> int:
        closed = await close_due_days(self.pool, self.setup, look_back_days=self._look_back)
        for day in closed:
            log.info("clearing_day_closed", day=day.isoformat(), forced=False)
        self._look_back = self.look_back_days
        return len(closed)
