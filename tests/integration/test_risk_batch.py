"""risk's set-based handler (issue 13): a run of payments.v1 events handed to
``RiskHandlers.on_events`` at once leaves exactly what each event's own handler, in
turn, leaves: the same reservations, days, payers, challenges and risk.v1 events, the
same rows written in the transaction. Checked on random runs (several payers, two
days, a person counted across two payer ids, caps reached, wallet caps, duplicates,
outcomes of earlier and unknown payments, step-ups) against the real PostgreSQL, one
database applying each event alone and another the whole run."""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.risk import store
from services.risk.config import RiskSettings
from services.risk.handlers import RunRaced, build_handlers
from shared.consumer import Batched
from shared.crypto import Sealer
from shared.db import migrate
from shared.events import (
    BeneficiaryRef,
    Event,
    EventPayload,
    PaymentDeclined,
    PaymentDetails,
    PaymentFailed,
    PaymentRequested,
    PaymentSucceeded,
    Purpose,
    decode,
    new_event,
)
from shared.money import shanghai_day, utcnow
from tests.integration.test_risk_flow import MIGRATIONS, PHONE, outcome_payload
from tests.support import Infra

pytestmark = pytest.mark.integration

# Small caps, so a few payments below the step-up threshold reach them.
CAP, WALLET_CAP, STEP_UP = 600_000, 300_000, 200_000
AMOUNTS = (1_000, 50_000, 120_000, 199_999)
METHODS = ("bank_card", "wallet", "medical_account")


def settings_for(dsn: str, infra: Infra) -> RiskSettings:
    return RiskSettings(
        dsn=dsn,
        KAFKA_BOOTSTRAP=infra.kafka_bootstrap,
        daily_cap_fen=CAP,
        wallet_daily_cap_fen=WALLET_CAP,
        step_up_threshold_fen=STEP_UP,
        phone_codes_per_hour=1000,
        cap_follows_person=True,
    )


class Story:
    """Random payments.v1 events of one seed's payers (ids unique to the seed)."""

    def __init__(self, seed: int, sealer: Sealer) -> None:
        self.rng = random.Random(seed)
        self.sealer = sealer
        tag = f"s{seed}"
        person = f"person-{tag}"
        # (payer id, the payer's ID hash): two payer ids of one person share its cap.
        self.payers = [(f"u-{tag}-a", None), (f"u-{tag}-b", person), (f"u-{tag}-c", person)]
        self.changing = f"u-{tag}-d"  # counted by payer id until its person is known
        self.known: list[PaymentDetails] = []
        self.now = utcnow()

    def details(self) -> PaymentDetails:
        payer_id, id_hash = self.rng.choice(self.payers)
        if self.rng.random() < 0.1:
            payer_id, id_hash = self.changing, self.rng.choice((None, f"person-{payer_id}"))
        payment_id = f"pay_{uuid.uuid4().hex}"
        step_up = self.rng.random() < 0.05
        return PaymentDetails(
            payment_id=payment_id,
            payer_id=payer_id,
            payer_phone_masked="138****8000",
            payer_phone_sealed=self.sealer.seal(PHONE, aad=f"phone:{payment_id}"),
            beneficiary=BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash="h",
                name="张三",
                relation="self",
            ),
            purpose=Purpose(type="premium", scheme="urban_rural_resident", region="110000"),
            amount=250_000 if step_up else self.rng.choice(AMOUNTS),
            method=self.rng.choice(METHODS),  # type: ignore[arg-type]
            payee_id="bureau:110000",
            payee_name="北京市医疗保障局",
            requested_at=self.now - timedelta(days=self.rng.choice((0, 0, 1))),
            payer_id_hash=id_hash,
            caller_id=f"caller_{self.rng.choice('xy')}",
        )

    def event(self) -> Event:
        roll = self.rng.random()
        if roll < 0.45 or not self.known:
            details = self.details()
            self.known.append(details)
            return _event(PaymentRequested(payment=details), details)
        if roll < 0.55:  # a copy of an earlier request under another event id
            details = self.rng.choice(self.known)
            return _event(PaymentRequested(payment=details), details)
        details = self.rng.choice(self.known) if roll < 0.95 else self.details()
        kind = self.rng.choice((PaymentSucceeded, PaymentSucceeded, PaymentDeclined, PaymentFailed))
        return _event(outcome_payload(kind, details), details)


def _event(payload: EventPayload, d: PaymentDetails) -> Event:
    envelope = new_event(payload, producer="payment", key=d.payer_id, correlation_id=d.payment_id)
    return Event(envelope, payload)


# What a database holds, rows written by the run's transaction marked (``$1`` = its
# now()), event ids, challenge ids and codes (random) left out.
STATE = {
    "reservations": "SELECT payment_id, payer_id, day, amount, method, state, decision,"
    " decline_code, cap_key, created_at = $1 AS created, updated_at = $1 AS written"
    " FROM reservations ORDER BY payment_id",
    "days": "SELECT payer_id, day, kept, reserved, wallet_kept, wallet_reserved,"
    " updated_at = $1 AS written FROM payer_day_usage ORDER BY payer_id, day",
    "payers": "SELECT payer_id, caller_id, cap_key, created_at = $1 AS created,"
    " updated_at = $1 AS written FROM payers ORDER BY payer_id",
    "challenges": "SELECT payment_id, amount, state, attempts, opened_at = $1 AS opened"
    " FROM challenges ORDER BY payment_id",
}


async def _state(conn: asyncpg.Connection, moment: datetime) -> dict[str, list[dict[str, Any]]]:
    state = {name: [dict(r) for r in await conn.fetch(sql, moment)] for name, sql in STATE.items()}
    events = []
    for row in await conn.fetch("SELECT topic, key, value FROM outbox ORDER BY id"):
        env = decode(bytes(row["value"])).envelope
        payload = {
            k: v
            for k, v in env.payload.items()
            if k not in ("challenge_id", "code_sealed", "expires_at")
        }
        events.append(
            {
                "key": row["key"],
                "type": env.event_type,
                "correlation_id": env.correlation_id,
                "causation_id": env.causation_id,
                "payload": payload,
            }
        )
    state["events"] = events
    return state


async def test_a_run_leaves_what_each_event_alone_would(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> None:
    one_by_one, as_runs = await new_database(), await new_database()
    for dsn in (one_by_one, as_runs):
        await migrate(dsn, MIGRATIONS)
    settings = settings_for(one_by_one, infra)
    handlers = build_handlers(settings)
    sealer = Sealer(settings.seal_key_bytes())
    alone, together = await asyncpg.connect(one_by_one), await asyncpg.connect(as_runs)
    statements: list[str] = []
    together.add_query_logger(lambda record: statements.append(record.query))
    set_based = 0
    try:
        for seed in range(40):
            story = Story(seed, sealer)
            history = [story.event() for _ in range(story.rng.randint(0, 8))]
            run = [story.event() for _ in range(story.rng.randint(2, 12))]
            for conn in (alone, together):  # the same past in both, event by event
                for event in history:
                    async with conn.transaction():
                        await handlers[event.event_type](conn, event)
            async with alone.transaction():
                moment_alone = await alone.fetchval("SELECT now()")
                for event in run:
                    await handlers[event.event_type](conn=alone, event=event)
            statements.clear()
            async with together.transaction():
                moment_together = await together.fetchval("SELECT now()")
                many = handlers[run[0].event_type]
                assert isinstance(many, Batched)
                await many.many(together, run)
            if _set_based(run):
                set_based += 1
                # lock_run's two statements, save_run, the outbox write (at most)
                ours = [q for q in statements if "pg_catalog" not in q and "jit" not in q]
                assert len(ours) <= 2 + 4, ours  # with BEGIN, SELECT now() and COMMIT
            seen_alone = await _state(alone, moment_alone)
            seen_together = await _state(together, moment_together)
            for name in seen_alone:
                assert seen_together[name] == seen_alone[name], (seed, name)
    finally:
        await alone.close()
        await together.close()
    assert set_based >= 20  # most runs took the set-based path


def _set_based(run: list[Event]) -> bool:
    """Whether ``on_events`` takes the run set-based: no request that may step up and no
    payer counted under two cap keys (else it applies the events one by one)."""
    requests = [e.payload.payment for e in run if isinstance(e.payload, PaymentRequested)]
    caps: dict[str, set[str | None]] = {}
    for p in requests:
        caps.setdefault(p.payer_id, set()).add(p.payer_id_hash)
    return all(p.amount < STEP_UP for p in requests) and all(len(c) == 1 for c in caps.values())


async def test_a_payment_decided_meanwhile_makes_the_run_go_one_by_one(
    infra: Infra, new_database: Callable[[], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should another transaction decide one of the run's payments after the run's
    locks (no decider does today without the day lock; the guard is for a cap key seen
    two ways), the run writes nothing and raises ``RunRaced``: the consumer rolls the
    batch back and applies it one event at a time, where that payment is seen decided."""
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    settings = settings_for(dsn, infra)
    handlers = build_handlers(settings)
    story = Story(1000, Sealer(settings.seal_key_bytes()))
    first, second = story.details(), story.details()
    first = first.model_copy(update={"amount": 1_000})
    second = second.model_copy(update={"amount": 1_000})
    run = [_event(PaymentRequested(payment=d), d) for d in (first, second)]
    conn, other = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    real_lock_run = store.lock_run

    async def lock_then_race(*args: Any) -> Any:
        locked = await real_lock_run(*args)
        await other.execute(  # decided elsewhere, under no day lock
            "INSERT INTO reservations (payment_id, payer_id, day, amount, method, state,"
            " decision, cap_key) VALUES ($1, $2, $3, 1000, 'bank_card', 'declined',"
            " 'decline', $2)",
            second.payment_id,
            second.payer_id,
            shanghai_day(second.requested_at),
        )
        return locked

    monkeypatch.setattr(store, "lock_run", lock_then_race)
    many = handlers[run[0].event_type]
    assert isinstance(many, Batched)
    try:
        with pytest.raises(RunRaced):
            async with conn.transaction():
                await many.many(conn, run)
        assert await conn.fetchval("SELECT count(*) FROM reservations") == 1  # the other's
        assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
        monkeypatch.undo()
        async with conn.transaction():  # the careful path: one by one
            for event in run:
                await many.one(conn, event)
        states = await conn.fetch("SELECT payment_id, state FROM reservations ORDER BY 1")
        assert {r["payment_id"]: r["state"] for r in states} == {
            first.payment_id: "reserved",
            second.payment_id: "declined",  # as the other transaction decided it
        }
        [approved] = await conn.fetch("SELECT event_type FROM outbox")
        assert approved["event_type"] == "RiskApproved"
    finally:
        await conn.close()
        await other.close()
