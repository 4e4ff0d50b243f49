"""Asking the acquiring bank: bank-card debits, refunds, and reversing a late debit.

Why the bank call sits in payment: authorizing a payment belongs to the payment state
machine (risk's yes, the resident's SMS code, then the bank's yes are all steps to
``authorized``), and the ledger books only confirmed money: it never sees a bank-card
payment before the bank confirmed it (``PaymentAuthorized`` v2 carries the bank's
confirmation), so a bank-card top-up cannot mint wallet money.

Crash safety: the call is a ``bank_calls`` row written in the same transaction that
put the payment (or refund) in ``awaiting_bank``. ``BankWorker`` leases due rows
(``FOR UPDATE SKIP LOCKED`` in one autocommitted statement that pushes
``next_attempt_at`` forward), calls the bank with no database transaction open, then
records the answer and its events in one transaction (the answer's guarded update of
the ``bank_calls`` row first: it locks the row and writes nothing if another worker
recorded an answer since the lease; then the payment's transition). A worker killed
between asking and recording leaves the lease to run out; the next attempt asks again
with the same reference and the bank answers what it already did (it dedupes by
reference), so a debit is neither lost nor taken twice. The calls of one lease are made
concurrently (at most ``batch_size`` at once), each recorded in its own transaction.

Debits: ``succeeded`` → ``PaymentAuthorized`` with ``bank_debit``; ``declined`` →
``PaymentFailed`` ``bank_declined`` (risk releases the cap reservation on it); no
answer, a 5xx, a refused connection or ``pending`` → asked again with backoff until
``PAYMENT_BANK_DEADLINE_SECONDS`` after the row was written, then ``PaymentFailed``
``bank_unavailable``, and the debit is watched (``GET /debits/{reference}``) for
``PAYMENT_BANK_WATCH_HOURS``: should the bank say ``succeeded`` after all, a
reversal (``POST /refunds``, reference ``rv_<payment id>``, the full amount) gives the
money back. Refunds (reference = refund id) are asked until the bank answers, with no
deadline: money owed to the payer is never given up on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

import asyncpg
import structlog

from services.payment import domain, refund_domain, store
from services.payment.payments import apply_command
from services.payment.refunds import apply_refund_command
from services.payment.store import BankCall
from shared.events import BankConfirmation
from shared.money import utcnow
from shared.outbound import JsonPoster, OutboundError
from shared.runtime import PollingWorker
from shared.topics import TopicNames

log = structlog.get_logger(__name__)

BankStatus = Literal["succeeded", "declined", "pending"]


@dataclass(frozen=True)
class BankAnswer:
    status: BankStatus
    reason: str | None


class BankClient:
    """The development bank's HTTP API (DESIGN.md "Contract additions: money from
    outside"). ``None`` from a call means no usable answer (network error, timeout,
    5xx or an unknown reference): ask again later."""

    def __init__(self, base_url: str, *, timeout: float = 5.0, max_connections: int = 20) -> None:
        # The lean client (shared/outbound.py): httpx was an eighth of payment's CPU.
        self._http = JsonPoster(base_url, timeout=timeout, max_connections=max_connections)

    async def aclose(self) -> None:
        await self._http.close()

    async def _call(self, path: str, body: dict[str, Any] | None) -> BankAnswer | None:
        """POST ``body`` to ``path``, or GET it when ``body`` is None."""
        try:
            reply = await (self._http.get(path) if body is None else self._http.post(path, body))
        except OutboundError as exc:
            log.warning("bank_unreachable", path=path, error=exc.kind)
            return None
        if reply.status_code != 200:
            log.warning("bank_no_answer", path=path, status=reply.status_code)
            return None
        try:
            data = reply.json()
            status = data["status"]
        except (ValueError, KeyError, TypeError):
            log.warning("bank_bad_answer", path=path)
            return None
        if status not in ("succeeded", "declined", "pending"):
            return None
        return BankAnswer(status, data.get("reason"))

    async def debit(self, reference: str, amount: int, payer_ref: str) -> BankAnswer | None:
        body = {"reference": reference, "amount": amount, "currency": "CNY", "payer_ref": payer_ref}
        return await self._call("/debits", body)

    async def read_debit(self, reference: str) -> BankAnswer | None:
        return await self._call(f"/debits/{reference}", None)

    async def refund(self, reference: str, debit_reference: str, amount: int) -> BankAnswer | None:
        body = {"reference": reference, "debit_reference": debit_reference, "amount": amount}
        return await self._call("/refunds", body)


def reversal_reference(payment_id: str) -> str:
    """The bank reference of the reversal of a debit confirmed after its deadline."""
    return f"rv_{payment_id}"


def backoff(attempts: int, policy: domain.BankPolicy) -> timedelta:
    """Pause before the next attempt: the base, doubled per attempt, capped."""
    pause: timedelta = policy.retry_base * (2 ** min(attempts, 20))
    return min(pause, policy.retry_max)


async def _still_as_leased(conn: asyncpg.Connection, call: BankCall) -> bool:
    """Lock the call; False when another worker recorded an answer since the lease (a
    lease that ran out while this worker waited for the bank)."""
    current = await store.lock_bank_call(conn, call.reference)
    if current is None or (current.state, current.attempts) != (call.state, call.attempts):
        log.info("bank_call_recorded_elsewhere")
        return False
    return True


class BankWorker(PollingWorker):
    """Runs due bank calls until stopped; several instances may run side by side.
    Polls adaptively; a call staged in this process wakes it once its transaction is
    over (``store.BANK_CALLS_CHANNEL``)."""

    name = "bank_worker"
    listen_to = store.BANK_CALLS_CHANNEL

    def __init__(
        self,
        pool: asyncpg.Pool,
        bank: BankClient,
        *,
        topics: TopicNames,
        policy: domain.BankPolicy,
        lease: timedelta = timedelta(seconds=30),
        poll_interval: float = 0.25,
        batch_size: int = 20,
    ) -> None:
        super().__init__(poll_interval=poll_interval, batch_size=batch_size)
        self._pool = pool
        self._bank = bank
        self._topics = topics
        self._policy = policy
        self._lease = lease
        self._limit = batch_size

    async def run_once(self) -> int:
        """Lease the due calls and make them concurrently (at most ``batch_size`` bank
        calls at once); how many were made. The rests between passes are
        ``PollingWorker``'s adaptive pacing (shared/polling.py)."""
        calls = await store.lease_bank_calls(self._pool, limit=self._limit, lease=self._lease)
        await asyncio.gather(*(self._make(call) for call in calls))
        return len(calls)

    async def _make(self, call: BankCall) -> None:
        with structlog.contextvars.bound_contextvars(
            payment_id=call.payment_id, bank_reference=call.reference, bank_call=call.kind
        ):
            try:
                if call.kind == "debit":
                    await self._debit(call)
                elif call.kind == "refund":
                    await self._refund(call)
                else:
                    await self._reverse(call)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("bank_call_not_recorded", error=repr(exc))  # the lease retries

    async def _debit(self, call: BankCall) -> None:
        if call.state == "watching":
            await self._watch(call)
            return
        answer = await self._bank.debit(call.reference, call.amount, call.payer_ref)
        now = utcnow()
        if answer is None or answer.status == "pending":
            if now < call.created_at + self._policy.deadline:
                await self._retry(call, answer)
                return
            message = domain.DECLINE_MESSAGES["bank_unavailable"]
            command: domain.Command = domain.FailDebit("bank_unavailable", message)
            state: store.BankCallState = "watching"
        elif answer.status == "succeeded":
            command, state = (
                domain.ConfirmDebit(BankConfirmation(reference=call.reference, confirmed_at=now)),
                "done",
            )
        else:
            message = domain.DECLINE_MESSAGES["bank_declined"]
            if answer.reason:
                message = f"{message} (bank: {answer.reason})"
            command, state = domain.FailDebit("bank_declined", message), "done"
        async with self._pool.acquire() as conn, conn.transaction():
            # The call's row first (as leased, else another worker answered), then the
            # payment's, locked and read in the same statement: the one lock order of
            # every bank answer.
            payment = await store.record_debit_answer(
                conn,
                call,
                state=state,
                answer=answer.status if answer else "no_answer",
                retry_in=self._policy.retry_max if state == "watching" else None,
                watch_until=now + self._policy.watch if state == "watching" else None,
            )
            if payment is None:
                log.info("bank_call_recorded_elsewhere")
                return
            await apply_command(
                conn,
                payments_topic=self._topics.payments,
                payment_id=call.payment_id,
                command=command,
                causation_id=None,
                locked=payment,
            )
        log.debug("bank_debit_recorded", answer=answer.status if answer else None, state=state)

    async def _watch(self, call: BankCall) -> None:
        """A debit we gave up on: if the bank says it succeeded after all, reverse it."""
        answer = await self._bank.read_debit(call.reference)
        now = utcnow()
        if answer is not None and answer.status == "succeeded":
            async with self._pool.acquire() as conn, conn.transaction():
                if not await _still_as_leased(conn, call):
                    return
                payment = await store.get_payment(conn, call.payment_id)
                if payment is None or payment.payment.decline_code != "bank_unavailable":
                    # Only money we gave up on is given back; never a booked payment.
                    await store.update_bank_call(conn, call.reference, state="done", answer="kept")
                    return
                await store.insert_bank_call(
                    conn,
                    reference=reversal_reference(call.payment_id),
                    kind="reversal",
                    payment_id=call.payment_id,
                    payer_ref=call.payer_ref,
                    amount=call.amount,
                    debit_reference=call.reference,
                )
                await store.update_bank_call(
                    conn, call.reference, state="done", answer="late_succeeded"
                )
            log.warning("bank_debit_succeeded_late", amount=call.amount)
            return
        finished = answer is not None and answer.status == "declined"
        if finished or (call.watch_until is not None and now >= call.watch_until):
            await store.update_bank_call(
                self._pool,
                call.reference,
                state="done",
                answer=answer.status if answer else "no_answer",
                expect_attempts=call.attempts,
            )
            return
        await store.update_bank_call(
            self._pool,
            call.reference,
            state="watching",
            answer=answer.status if answer else "no_answer",
            retry_in=self._policy.retry_max,
            expect_attempts=call.attempts,
        )

    async def _reverse(self, call: BankCall) -> None:
        assert call.debit_reference is not None
        answer = await self._bank.refund(call.reference, call.debit_reference, call.amount)
        if answer is None or answer.status == "pending":
            await self._retry(call, answer)
            return
        await store.update_bank_call(
            self._pool,
            call.reference,
            state="done",
            answer=answer.status,
            expect_attempts=call.attempts,
        )
        log.info("bank_debit_reversed", answer=answer.status, reason=answer.reason)

    async def _refund(self, call: BankCall) -> None:
        assert call.refund_id is not None
        assert call.debit_reference is not None
        answer = await self._bank.refund(call.reference, call.debit_reference, call.amount)
        if answer is None or answer.status == "pending":
            await self._retry(call, answer)
            return
        now = utcnow()
        command: refund_domain.RefundCommand
        if answer.status == "succeeded":
            confirmation = BankConfirmation(reference=call.reference, confirmed_at=now)
            command = refund_domain.ConfirmBankRefund(confirmation, now)
        else:
            reason = f" (bank: {answer.reason})" if answer.reason else ""
            command = refund_domain.FailRefund(
                "bank_declined", "the bank declined the refund" + reason
            )
        async with self._pool.acquire() as conn, conn.transaction():
            if not await store.record_bank_answer(conn, call, state="done", answer=answer.status):
                log.info("bank_call_recorded_elsewhere")
                return
            await apply_refund_command(
                conn, self._topics, call.refund_id, command, causation_id=None
            )
        log.debug("bank_refund_recorded", answer=answer.status)

    async def _retry(self, call: BankCall, answer: BankAnswer | None) -> None:
        await store.update_bank_call(
            self._pool,
            call.reference,
            state=call.state,
            answer=answer.status if answer else "no_answer",
            retry_in=backoff(call.attempts, self._policy),
            expect_attempts=call.attempts,
        )
