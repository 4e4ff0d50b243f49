"""Kafka handlers for payments.v1, the challenge expiry sweeper, and the transactional
steps they share with the HTTP edge (recording a challenge outcome, releasing a
reservation, staging a step-up). Each runs inside the caller's transaction and writes
its risk.v1 events to the outbox there.

Refunds do not give the daily cap back: the cap counts what a payer paid that day,
and a refund (``RefundAuthorized``/``RefundSucceeded`` on payments.v1) is not a
payment; risk does not subscribe to them. A payment that fails after risk approved it
(``PaymentFailed``, e.g. ``bank_declined`` or ``bank_unavailable``) releases its
reservation like a decline.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import asyncpg
import structlog

from services.risk import store
from services.risk.config import RiskSettings
from services.risk.domain import (
    Challenge,
    DayUsage,
    Decision,
    ReservationState,
    RiskRules,
    attempts_left,
    cap_key,
    decide_request,
    expire,
    open_challenge,
    phone_code_wait,
    phone_limited,
    settle,
)
from services.risk.store import DayKey, NewDecision, PayerOwner, Reservation
from shared.consumer import Batched, Handler
from shared.crypto import KeyPurpose, Sealer, code_aad, keyed_hash, phone_aad
from shared.events import (
    Envelope,
    Event,
    EventFactory,
    EventPayload,
    LimitReleased,
    PaymentDeclined,
    PaymentDetails,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    RiskApproved,
    RiskDeclined,
    StepUpFailed,
    StepUpPassed,
    StepUpRequired,
)
from shared.money import shanghai_day, utcnow
from shared.outbox import write_outbox
from shared.person_keys import PersonKeyCopies
from shared.personal import PhoneErased
from shared.runtime import PollingWorker
from shared.topics import TopicNames

log = structlog.get_logger(__name__)

EVENTS = EventFactory("risk")


def risk_event(
    payload: EventPayload, *, payer_id: str, payment_id: str, causation_id: uuid.UUID | None
) -> Envelope:
    """A risk.v1 envelope: keyed by the payer, correlated with the payment."""
    return EVENTS.new(payload, key=payer_id, correlation_id=payment_id, causation_id=causation_id)


def seal_code(sealer: Sealer, code: str, challenge_id: str) -> str:
    return sealer.seal(code, aad=code_aad(challenge_id))


def phone_key(hash_key: bytes, phone: str) -> str:
    """The keyed hash a phone's codes are counted under (never the number)."""
    return keyed_hash(hash_key, "phone", phone)


async def phone_code_wait_locked(
    conn: asyncpg.Connection, phone_hash: str, now: datetime, rules: RiskRules
) -> timedelta | None:
    """How long the phone must wait for another code (None: it may get one now), with
    its window locked until the transaction ends (``store`` lock order: last)."""
    sent = await store.lock_phone_codes(conn, phone_hash, now - rules.phone_code_window)
    wait = phone_code_wait(sent, now, rules)
    return wait if wait > timedelta(0) else None


def approved_or_declined(p: PaymentDetails, decision: Decision) -> RiskApproved | RiskDeclined:
    """The event of a decision that asks for no code."""
    figures = {
        "payment_id": p.payment_id,
        "payer_id": p.payer_id,
        "day": decision.day.isoformat(),
        "cap": decision.cap,
        "used": decision.used,
        "remaining": decision.remaining,
    }
    if decision.outcome == "approve":
        return RiskApproved(**figures)
    assert decision.outcome == "decline"
    assert decision.decline_code is not None
    assert decision.message is not None
    return RiskDeclined(decline_code=decision.decline_code, message=decision.message, **figures)


def reservation_of(p: PaymentDetails, decision: Decision, counted_in: str) -> Reservation:
    """The reservation a decision records (``declined`` when it reserves nothing)."""
    return Reservation(
        payment_id=p.payment_id,
        payer_id=p.payer_id,
        day=decision.day,
        amount=p.amount,
        method=p.method,
        state="reserved" if decision.reserves else "declined",
        cap_key=counted_in,
    )


def decided_event(
    p: PaymentDetails, decision: Decision, payload: EventPayload, causation_id: uuid.UUID
) -> Envelope:
    """The risk.v1 event of a recorded decision; its one log line (per payment)."""
    log.info(
        "payment_decided",
        payment_id=p.payment_id,
        outcome=decision.outcome,
        decline_code=decision.decline_code,
        amount=p.amount,
        used=decision.used,
        cap=decision.cap,
    )
    return risk_event(
        payload, payer_id=p.payer_id, payment_id=p.payment_id, causation_id=causation_id
    )


def step_up_required(
    challenge: Challenge, code_sealed: str, *, day: str, cap: int, used: int
) -> StepUpRequired:
    return StepUpRequired(
        payment_id=challenge.payment_id,
        payer_id=challenge.payer_id,
        day=day,
        cap=cap,
        used=used,
        remaining=max(cap - used, 0),
        challenge_id=challenge.challenge_id,
        expires_at=challenge.expires_at,
        amount=challenge.amount,
        payee_name=challenge.payee_name,
        code_sealed=code_sealed,
        payer_phone_sealed=challenge.payer_phone_sealed,
    )


async def stage_step_up(
    conn: asyncpg.Connection,
    topics: TopicNames,
    sealer: Sealer,
    challenge: Challenge,
    code: str,
    *,
    cap: int,
) -> None:
    """Publish a resent code: StepUpRequired with today's figures and the sealed code."""
    reservation = await store.get_reservation(conn, challenge.payment_id)
    assert reservation is not None  # a challenge always has its reservation
    usage = await store.read_day(conn, reservation.cap_key, reservation.day)
    payload = step_up_required(
        challenge,
        seal_code(sealer, code, challenge.challenge_id),
        day=reservation.day.isoformat(),
        cap=cap,
        used=usage.used,
    )
    event = risk_event(
        payload, payer_id=challenge.payer_id, payment_id=challenge.payment_id, causation_id=None
    )
    await write_outbox(conn, topics.risk, [event])


async def release_reservation(
    conn: asyncpg.Connection, payment_id: str, *, causation_id: uuid.UUID | None
) -> list[Envelope]:
    """Give a still-reserved amount back to the payer's day; LimitReleased when it did.
    Two statements: the day and the reservation locked and read, then both written."""
    locked = await store.lock_reserved(conn, payment_id)
    if locked is None or locked[0].state != "reserved":
        return []
    current, usage = locked
    usage = usage.release(current.amount, current.method)
    await store.settle_reserved(conn, current, usage, settle(current.state, "ended"))
    return [limit_released(current, usage, causation_id)]


def limit_released(
    current: Reservation, usage: DayUsage, causation_id: uuid.UUID | None
) -> Envelope:
    """The LimitReleased event of ``current`` given back, ``usage`` its day after."""
    log.debug(
        "limit_released", payment_id=current.payment_id, amount=current.amount, used=usage.used
    )
    released = LimitReleased(
        payment_id=current.payment_id,
        payer_id=current.payer_id,
        day=current.day.isoformat(),
        amount=current.amount,
        used=usage.used,
    )
    return risk_event(
        released,
        payer_id=current.payer_id,
        payment_id=current.payment_id,
        causation_id=causation_id,
    )


async def record_challenge(
    conn: asyncpg.Connection,
    topics: TopicNames,
    challenge: Challenge,
    *,
    rules: RiskRules,
    release: bool,
    causation_id: uuid.UUID | None = None,
) -> None:
    """Store a changed challenge and publish StepUpPassed / StepUpFailed (+ release)."""
    await store.save_challenge(conn, challenge)
    ids = {"payment_id": challenge.payment_id, "payer_id": challenge.payer_id}
    payload: EventPayload
    if challenge.state == "passed":
        payload = StepUpPassed(challenge_id=challenge.challenge_id, **ids)
    else:
        payload = StepUpFailed(
            challenge_id=challenge.challenge_id,
            attempts_left=attempts_left(challenge, rules),
            final=challenge.state == "dead",
            decline_code=challenge.decline_code,
            **ids,
        )
    events = [
        risk_event(
            payload,
            payer_id=challenge.payer_id,
            payment_id=challenge.payment_id,
            causation_id=causation_id,
        )
    ]
    if release:
        events += await release_reservation(conn, challenge.payment_id, causation_id=causation_id)
    await write_outbox(conn, topics.risk, events)
    log.debug(
        "challenge_recorded",
        payment_id=challenge.payment_id,
        state=challenge.state,
        attempts=challenge.attempts,
        decline_code=challenge.decline_code,
    )


class RiskHandlers:
    """payments.v1 → risk decisions, reservations and challenges."""

    def __init__(
        self,
        *,
        rules: RiskRules,
        topics: TopicNames,
        seal_key: bytes,
        code_hash_key: bytes,
        phone_hash_key: bytes,
        old_seal_keys: Sequence[bytes] = (),
    ) -> None:
        self._rules = rules
        self._topics = topics
        self._sealer = Sealer(seal_key, old_keys=old_seal_keys)
        self._keys = PersonKeyCopies(self._sealer, remember_erased=True)
        self._code_hash_key = code_hash_key
        self._phone_hash_key = phone_hash_key

    def person_key_handlers(self) -> dict[str, Handler]:
        return self._keys.handlers()

    async def on_payment_requested(self, conn: asyncpg.Connection, event: Event) -> None:
        assert isinstance(event.payload, PaymentRequested)
        await self._decide(conn, event.payload.payment, event.event_id)

    async def _decide(
        self, conn: asyncpg.Connection, p: PaymentDetails, causation_id: uuid.UUID
    ) -> None:
        """Three statements for an approval or a decline (the day locked and read, the
        decision recorded, its event staged); a step-up adds the phone's code window
        and the challenge."""
        day = shanghai_day(p.requested_at)
        counted_in = self._cap_key(p)
        # Checked under the person's day lock: a payment decided before (a copy of the
        # request under another event id, or another instance that held the lock).
        usage, decided = await store.lock_day_for(conn, counted_in, day, p.payment_id)
        if decided:
            log.debug("payment_already_decided", payment_id=p.payment_id)
            return
        now = utcnow()
        decision = decide_request(usage, p.amount, p.method, p.requested_at, self._rules)
        phone_hash = None
        if decision.outcome == "step_up":
            phone_hash = await self._phone_hash(conn, p)
            wait = None
            if phone_hash is not None:
                wait = await phone_code_wait_locked(conn, phone_hash, now, self._rules)
            if wait:
                decision = phone_limited(decision, usage.used, wait, self._rules)
        reservation = reservation_of(p, decision, counted_in)
        recorded = await store.record_decision(
            conn,
            reservation,
            decision=decision.outcome,
            decline_code=decision.decline_code,
            usage=usage.reserve(p.amount, p.method) if decision.reserves else None,
            caller_id=p.caller_id,
        )
        if not recorded:  # decided meanwhile by a transaction that held the day lock
            log.debug("payment_already_decided", payment_id=p.payment_id)
            return
        payload = await self._decision_event(conn, p, decision, now=now, phone_hash=phone_hash)
        await write_outbox(
            conn, self._topics.risk, [decided_event(p, decision, payload, causation_id)]
        )

    async def _phone_hash(self, conn: asyncpg.Connection, p: PaymentDetails) -> str | None:
        """The payer's phone, as risk counts its codes; None when the person was erased
        (issue 11: the phone opens for nobody, no code can reach it: notify sends none).
        A person key not copied here yet is waited for (``PersonKeyPending``)."""
        try:
            phone = await self._keys.open_phone(
                conn, p.payer_phone_sealed, aad=phone_aad(p.payment_id)
            )
        except PhoneErased:
            log.warning("payer_phone_erased_no_code_counted", payment_id=p.payment_id)
            return None
        return phone_key(self._phone_hash_key, phone)

    async def _decision_event(
        self,
        conn: asyncpg.Connection,
        p: PaymentDetails,
        decision: Decision,
        *,
        now: datetime,
        phone_hash: str | None,
    ) -> EventPayload:
        if decision.outcome != "step_up":
            return approved_or_declined(p, decision)
        challenge, code = open_challenge(
            challenge_id=str(uuid.uuid4()),
            payment_id=p.payment_id,
            payer_id=p.payer_id,
            amount=p.amount,
            payee_id=p.payee_id,
            payee_name=p.payee_name,
            payer_phone_sealed=p.payer_phone_sealed,
            now=now,
            rules=self._rules,
            hash_key=self._code_hash_key,
            phone_hash=phone_hash,
        )
        await store.insert_challenge(conn, challenge)
        if phone_hash is not None:
            await store.record_phone_code(conn, phone_hash, p.payment_id, now)
        return step_up_required(
            challenge,
            seal_code(self._sealer, code, challenge.challenge_id),
            day=decision.day.isoformat(),
            cap=decision.cap,
            used=decision.used,
        )

    async def on_payment_succeeded(self, conn: asyncpg.Connection, event: Event) -> None:
        """The reserved amount stays counted, as kept (two statements)."""
        assert isinstance(event.payload, PaymentSucceeded)
        payment_id = event.payload.payment_id
        locked = await store.lock_reserved(conn, payment_id)
        if locked is None or locked[0].state != "reserved":
            log.debug("keep_skipped", payment_id=payment_id)
            return
        current, usage = locked
        await store.settle_reserved(
            conn,
            current,
            usage.keep(current.amount, current.method),
            settle(current.state, "succeeded"),
        )
        log.debug("limit_kept", payment_id=payment_id, amount=current.amount)

    async def on_payment_ended(self, conn: asyncpg.Connection, event: Event) -> None:
        """PaymentDeclined or PaymentFailed: the reserved amount goes back to the day."""
        assert isinstance(event.payload, PaymentDeclined | PaymentFailed)
        events = await release_reservation(
            conn, event.payload.payment_id, causation_id=event.event_id
        )
        await write_outbox(conn, self._topics.risk, events)

    on_payment_declined = on_payment_ended
    on_payment_failed = on_payment_ended

    async def _one(self, conn: asyncpg.Connection, event: Event) -> None:
        """The handler of ``event`` alone (``Batched.one``)."""
        if isinstance(event.payload, PaymentRequested):
            await self.on_payment_requested(conn, event)
        elif isinstance(event.payload, PaymentSucceeded):
            await self.on_payment_succeeded(conn, event)
        else:
            await self.on_payment_ended(conn, event)

    async def on_events(self, conn: asyncpg.Connection, events: list[Event]) -> None:
        """A run of payments.v1 events (``Batched.many``), with the effects of each
        event's own handler in turn, in four statements whatever its length (issue 13):
        the days and reservations it touches locked and read (``store.lock_run``), every
        decision and settlement worked out in memory in event order, everything written
        in one statement (``store.save_run``), the risk.v1 events staged in one write.

        Handled one by one instead: a run of one event; a request that may step up (a
        challenge, a phone's code window: rare, and each its own statements); a payer
        whose cap key changes within the run. A race the locks cannot see (a payment
        another transaction decided or reserved meanwhile) raises, and the consumer
        applies the batch one event at a time."""
        requests = [e.payload.payment for e in events if isinstance(e.payload, PaymentRequested)]
        caps = {p.payer_id: set[str]() for p in requests}
        for p in requests:
            caps[p.payer_id].add(self._cap_key(p))
        if (
            len(events) == 1
            or any(p.amount >= self._rules.step_up_threshold_fen for p in requests)
            or any(len(keys) > 1 for keys in caps.values())
        ):
            for event in events:
                await self._one(conn, event)
            return
        ids = list(dict.fromkeys(self._payment_id(e) for e in events))
        days = sorted({(self._cap_key(p), shanghai_day(p.requested_at)) for p in requests})
        usages, reservations = await store.lock_run(conn, days, ids)
        run = _Run(usages, reservations)
        envelopes: list[Envelope] = []
        for event in events:
            with structlog.contextvars.bound_contextvars(payment_id=self._payment_id(event)):
                envelopes += self._apply_in_memory(run, event)
        if run.decided or run.settled or run.touched:
            new = await store.save_run(
                conn,
                decided=list(run.decided.values()),
                settled={pid: run.reservations[pid].state for pid in run.settled},
                usages={key: run.usages[key] for key in sorted(run.touched)},
                owners=run.owners,
            )
            if new != len(run.decided):
                raise RunRaced(f"{len(run.decided) - new} of the run's payments decided meanwhile")
        await write_outbox(conn, self._topics.risk, envelopes)

    @staticmethod
    def _payment_id(event: Event) -> str:
        p = event.payload
        if isinstance(p, PaymentRequested):
            return p.payment.payment_id
        assert isinstance(p, PaymentSucceeded | PaymentDeclined | PaymentFailed)
        return p.payment_id

    def _cap_key(self, p: PaymentDetails) -> str:
        return cap_key(p.payer_id, p.payer_id_hash if self._rules.cap_follows_person else None)

    def _apply_in_memory(self, run: _Run, event: Event) -> list[Envelope]:
        """What the event's own handler decides, on the run's state in memory (the same
        rules, logs and events); the risk.v1 events it stages."""
        p = event.payload
        if isinstance(p, PaymentRequested):
            return self._decide_in_memory(run, p.payment, event.event_id)
        payment_id = self._payment_id(event)
        current = run.reservations.get(payment_id)
        if current is None or current.state != "reserved":
            if isinstance(p, PaymentSucceeded):
                log.debug("keep_skipped", payment_id=payment_id)
            return []
        key = (current.cap_key, current.day)
        if key not in run.usages:  # reserved after lock_run read the days: not locked
            raise RunRaced(f"{payment_id} was reserved by another transaction meanwhile")
        if isinstance(p, PaymentSucceeded):
            run.usages[key] = run.usages[key].keep(current.amount, current.method)
            run.settle(current, settle(current.state, "succeeded"))
            log.debug("limit_kept", payment_id=payment_id, amount=current.amount)
            return []
        usage = run.usages[key] = run.usages[key].release(current.amount, current.method)
        run.settle(current, settle(current.state, "ended"))
        return [limit_released(current, usage, event.event_id)]

    def _decide_in_memory(
        self, run: _Run, p: PaymentDetails, causation_id: uuid.UUID
    ) -> list[Envelope]:
        """``_decide`` for a request that cannot step up, on the run's state."""
        if p.payment_id in run.reservations:
            log.debug("payment_already_decided", payment_id=p.payment_id)
            return []
        day = shanghai_day(p.requested_at)
        key = (self._cap_key(p), day)
        usage = run.usages[key]
        decision = decide_request(usage, p.amount, p.method, p.requested_at, self._rules)
        assert decision.outcome != "step_up"  # such runs go one by one (on_events)
        reservation = reservation_of(p, decision, key[0])
        run.reservations[p.payment_id] = reservation
        run.decided[p.payment_id] = NewDecision(
            reservation, decision.outcome, decision.decline_code
        )
        if decision.reserves:
            run.usages[key] = usage.reserve(p.amount, p.method)
            run.touched.add(key)
        if p.caller_id is not None:
            first = run.owners.get(p.payer_id)
            caller = first.caller_id if first is not None else p.caller_id
            run.owners[p.payer_id] = PayerOwner(p.payer_id, caller, key[0])
        return [decided_event(p, decision, approved_or_declined(p, decision), causation_id)]


class RunRaced(Exception):
    """A run met a payment another transaction decided or reserved after the run's
    locks were taken: the consumer rolls back and applies the batch one by one."""


@dataclass
class _Run:
    """A run's state in memory: the locked days' usage and the reservations, as each
    event in turn leaves them, and what must be written."""

    usages: dict[DayKey, DayUsage]
    reservations: dict[str, Reservation]
    decided: dict[str, NewDecision] = field(default_factory=dict)  # new this run, by id
    settled: set[str] = field(default_factory=set)  # reservations that existed before
    touched: set[DayKey] = field(default_factory=set)  # days whose usage was written
    owners: dict[str, PayerOwner] = field(default_factory=dict)

    def settle(self, current: Reservation, state: ReservationState) -> None:
        settled = replace(current, state=state)
        self.reservations[current.payment_id] = settled
        self.touched.add((current.cap_key, current.day))
        new = self.decided.get(current.payment_id)
        if new is None:
            self.settled.add(current.payment_id)
        else:  # decided in this run: its row is written once, in its final state
            self.decided[current.payment_id] = replace(new, reservation=settled)


def build_handlers(settings: RiskSettings) -> dict[str, Handler]:
    """The InboxConsumer handler map for payments.v1: event_type → ``on_<event name>``.
    With the person keys' handlers (person-keys.v1, consumed apart:
    ``shared.person_keys.person_key_consumer``: a phone waits for its key)."""
    h = RiskHandlers(
        rules=settings.rules(),
        topics=settings.topics,
        seal_key=settings.seal_key_bytes(),
        code_hash_key=settings.hash_key_for(KeyPurpose.CODE_HASH),
        phone_hash_key=settings.hash_key_for(KeyPurpose.PHONE_HASH),
        old_seal_keys=settings.old_seal_key_bytes(),
    )
    return {
        PaymentRequested.event_type: Batched(h.on_payment_requested, h.on_events),
        PaymentSucceeded.event_type: Batched(h.on_payment_succeeded, h.on_events),
        PaymentDeclined.event_type: Batched(h.on_payment_declined, h.on_events),
        PaymentFailed.event_type: Batched(h.on_payment_failed, h.on_events),
        **h.person_key_handlers(),
    }


class ExpirySweeper(PollingWorker):
    """Kills pending challenges past their expiry: StepUpFailed(final) + LimitReleased."""

    name = "expiry_sweeper"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        rules: RiskRules,
        topics: TopicNames,
        interval: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        super().__init__(poll_interval=interval, batch_size=batch_size)
        self._pool = pool
        self._rules = rules
        self._topics = topics
        self._limit = batch_size

    async def run_once(self) -> int:
        return await self.sweep_once()

    async def sweep_once(self, now: datetime | None = None) -> int:
        """Expire what is due at ``now``; returns how many challenges this call killed."""
        now = now or utcnow()
        async with self._pool.acquire() as conn:
            candidates = await store.find_expired_challenges(conn, now, self._limit)
        swept = 0
        for challenge_id, payment_id in candidates:
            async with self._pool.acquire() as conn, conn.transaction():
                found = await store.get_reservation(conn, payment_id)
                if found is not None:
                    await store.lock_day(conn, found.cap_key, found.day)
                challenge = await store.claim_expired(conn, challenge_id, now)
                if challenge is None:
                    continue  # verified, resent or swept by someone else meanwhile
                with structlog.contextvars.bound_contextvars(payment_id=payment_id):
                    await record_challenge(
                        conn, self._topics, expire(challenge), rules=self._rules, release=True
                    )
                swept += 1
        return swept
