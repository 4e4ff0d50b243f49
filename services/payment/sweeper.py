"""Payments stuck in a non-final state: found, surfaced in the log, and moved on.

``StuckPaymentSweeper`` looks every ``interval`` seconds for payments that have not
moved for ``StuckPolicy.after`` (``requested``: risk never answered; ``authorized``:
the ledger never did) and for ``requires_verification`` payments whose code expired
(``StuckPolicy.verification_grace`` ago). What it does is ``domain.stuck_action``:
the former get their last event published again (never a second reservation or
booking: both readers decide once per payment), the latter are declined
``verification_expired``, which releases their cap reservation. ``awaiting_bank`` is
the bank worker's (its deadline fails it ``bank_unavailable``).

Each payment is handled in its own transaction, locked ``SKIP LOCKED``, so two
instances never both nudge one payment, and a handler moving it meanwhile wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg
import structlog

from services.payment import domain, store
from services.payment.payments import apply_command, stage_events
from shared.money import utcnow
from shared.runtime import PollingWorker
from shared.topics import TopicNames

log = structlog.get_logger(__name__)


@dataclass
class SweepStats:
    """What the sweeper did since it started (surfaced in its log lines)."""

    republished: int = 0
    expired: int = 0


class StuckPaymentSweeper(PollingWorker):
    name = "stuck_payment_sweeper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        topics: TopicNames,
        policy: domain.StuckPolicy,
        interval: float = 30.0,
        batch_size: int = 100,
    ) -> None:
        # No batch_size for the loop: it rests ``interval`` after every pass, even a
        # full one (``batch_size`` only caps how many payments one pass looks at).
        super().__init__(poll_interval=interval, batch_size=None)
        self._pool = pool
        self._topics = topics
        self._policy = policy
        self._limit = batch_size
        self.stats = SweepStats()

    async def run_once(self) -> int:
        return await self.sweep_once()

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Handle what is stuck at ``now``; how many payments this call moved on."""
        now = now or utcnow()
        candidates = await store.find_unfinished(
            self._pool,
            quiet_since=now - self._policy.after,
            code_expired_before=now - self._policy.verification_grace,
            limit=self._limit,
        )
        moved = 0
        for payment_id in candidates:
            with structlog.contextvars.bound_contextvars(payment_id=payment_id):
                async with self._pool.acquire() as conn, conn.transaction():
                    moved += await self._handle(conn, payment_id, now)
        if moved:
            log.info(
                "stuck_payments_handled",
                moved=moved,
                republished_total=self.stats.republished,
                expired_total=self.stats.expired,
            )
        return moved

    async def _handle(self, conn: asyncpg.Connection, payment_id: str, now: datetime) -> int:
        unfinished = await store.lock_unfinished(conn, payment_id)
        if unfinished is None:
            return 0  # another sweeper has it
        stored = await store.get_payment(conn, payment_id)
        assert stored is not None  # payments are never deleted
        payment = stored.payment
        action = domain.stuck_action(
            payment,
            updated_at=unfinished.updated_at,
            nudged_at=unfinished.nudged_at,
            now=now,
            policy=self._policy,
        )
        if action == "expire_verification":
            await apply_command(
                conn,
                payments_topic=self._topics.payments,
                payment_id=payment_id,
                command=domain.FailStepUp("verification_expired"),
                causation_id=None,
            )
            self.stats.expired += 1
            log.warning("stuck_verification_declined", expired_at=payment.verification_expires_at)
            return 1
        if action == "republish":
            await stage_events(
                conn,
                self._topics.payments,
                [domain.last_event(payment)],
                key=payment.details.payer_id,
                correlation_id=payment_id,
                causation_id=None,
            )
            nudges = await store.mark_nudged(conn, payment_id, now)
            self.stats.republished += 1
            report = log.warning if nudges < 3 else log.error  # then someone must look
            report(
                "payment_stuck_republished",
                status=payment.status.value,
                quiet_for_s=int((now - unfinished.updated_at).total_seconds()),
                nudges=nudges,
            )
            return 1
        return 0
