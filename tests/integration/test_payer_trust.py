"""Who may act for whom (issue 11), through the payment API and the real risk service,
both on PostgreSQL, with two caller keys.

payment and risk each get a fresh database; events travel between them by reading one
side's outbox and applying the rows with the other side's handlers (the consumer path
minus Kafka: test_risk_flow.py runs the real consumer); payment reaches risk's
internal endpoints over HTTP in-process. Each assertion here fails on the code before
issue 11: payers were anybody's, codes went to the phone each request named, a new
payer id was a fresh cap, and a challenge could be kept alive forever.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment.__main__ import MIGRATIONS as PAYMENT_MIGRATIONS
from services.payment.api import create_app as create_payment_app
from services.payment.config import PaymentSettings
from services.payment.handlers import PaymentHandlers
from services.payment.risk_client import RiskClient
from services.payment.validation import id_check_char
from services.risk.__main__ import MIGRATIONS as RISK_MIGRATIONS
from services.risk.api import create_app as create_risk_app
from services.risk.config import RiskSettings
from services.risk.handlers import ExpirySweeper, build_handlers
from shared.consumer import Handler
from shared.crypto import Sealer, phone_aad
from shared.db import create_pool, migrate
from shared.events import Event, PaymentRequested, StepUpRequired, decode
from shared.money import utcnow
from tests.phones import event_phone
from tests.support import random_prefix

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "yb_test_trust_a", "yb_test_trust_b"


def caller_name(key: str) -> str:
    return "caller_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_payer() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def new_phone() -> str:
    return "139" + f"{uuid.uuid4().int % 10**8:08d}"


def new_id_number() -> str:
    """A valid, random resident ID number (so each test is its own person)."""
    first17 = f"110105{1950 + uuid.uuid4().int % 50}0101{uuid.uuid4().int % 1000:03d}"
    return first17 + id_check_char(first17)


def body(
    payer_id: str,
    *,
    phone: str,
    amount: int = 38000,
    id_number: str | None = None,
    relation: str = "self",
    method: str = "medical_account",
) -> dict[str, Any]:
    return {
        "payer_id": payer_id,
        "payer_phone": phone,
        "beneficiary": {
            "id_number": id_number or new_id_number(),
            "name": "张三",
            "relation": relation,
        },
        "purpose": {
            "type": "premium",
            "scheme": "urban_rural_resident",
            "region": "110000",
            "period": "2027",
        },
        "amount": amount,
        "currency": "CNY",
        "method": method,
    }


@dataclass
class Pair:
    settings: PaymentSettings
    risk_settings: RiskSettings
    payment_pool: asyncpg.Pool
    risk_pool: asyncpg.Pool
    risk_handlers: dict[str, Handler]
    client: httpx.AsyncClient
    risk_client: httpx.AsyncClient
    shift: list[timedelta]
    seen: set[uuid.UUID] = field(default_factory=set)

    @property
    def sealer(self) -> Sealer:
        return Sealer(self.settings.seal_key_bytes())

    async def _new(self, pool: asyncpg.Pool) -> list[Event]:
        rows = await pool.fetch("SELECT value FROM outbox ORDER BY id")
        events = [decode(bytes(r["value"])) for r in rows]
        fresh = [e for e in events if e.event_id not in self.seen]
        self.seen.update(e.event_id for e in fresh)
        return fresh

    async def to_risk(self) -> list[Event]:
        events = await self._new(self.payment_pool)
        for event in events:
            handler = self.risk_handlers.get(event.event_type)
            if handler is not None:
                async with self.risk_pool.acquire() as conn, conn.transaction():
                    await handler(conn, event)
        return events

    async def to_payment(self) -> list[Event]:
        events = await self._new(self.risk_pool)
        for event in events:
            async with self.payment_pool.acquire() as conn, conn.transaction():
                await PaymentHandlers(self.settings.topics).on_payment_event(conn, event)
        return events

    async def pay(self, data: dict[str, Any], key: str = KEY_A) -> httpx.Response:
        return await self.client.post(
            "/v1/payments", json=data, headers={**auth(key), "Idempotency-Key": uuid.uuid4().hex}
        )

    async def requested(self, payment_id: str) -> PaymentRequested:
        rows = await self.payment_pool.fetch(
            "SELECT value FROM outbox WHERE event_type = 'PaymentRequested' ORDER BY id"
        )
        for row in rows:
            event = decode(bytes(row["value"]))
            assert isinstance(event.payload, PaymentRequested)
            if event.payload.payment.payment_id == payment_id:
                return event.payload
        raise AssertionError(f"no PaymentRequested for {payment_id}")

    async def through_risk(self, payment_id: str) -> list[Event]:
        """Deliver what payment published to risk and risk's answer back; risk's events."""
        await self.to_risk()
        return [e for e in await self.to_payment() if e.envelope.correlation_id == payment_id]

    async def daily_cap(self, payer_id: str, key: str = KEY_A) -> httpx.Response:
        return await self.risk_client.get(f"/v1/payers/{payer_id}/daily-cap", headers=auth(key))


@pytest.fixture
async def pair(new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[Pair]:
    payment_dsn, risk_dsn = await new_database(), await new_database()
    await migrate(payment_dsn, PAYMENT_MIGRATIONS)
    await migrate(risk_dsn, RISK_MIGRATIONS)
    payment_pool, risk_pool = await create_pool(payment_dsn), await create_pool(risk_dsn)
    prefix = random_prefix()
    keys = f"{KEY_A},{KEY_B}"
    settings = PaymentSettings(
        environment="development", dsn=payment_dsn, topic_prefix=prefix, api_keys=keys
    )
    risk_settings = RiskSettings(
        YIBAO_ENVIRONMENT="development",
        dsn=risk_dsn,
        YIBAO_TOPIC_PREFIX=prefix,
        API_KEY=keys,
        cap_follows_person=True,  # off by default (services/risk/config.py); tested here
    )
    shift = [timedelta(0)]

    def clock() -> datetime:
        return utcnow() + shift[0]

    risk_app = create_risk_app(risk_settings, risk_pool, clock=clock)
    risk = RiskClient(
        "http://risk",
        settings.internal_token.get_secret_value(),
        transport=httpx.ASGITransport(app=risk_app),
    )
    app = create_payment_app(settings, payment_pool, risk=risk)
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://p") as client,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=risk_app), base_url="http://r"
        ) as risk_client,
    ):
        yield Pair(
            settings,
            risk_settings,
            payment_pool,
            risk_pool,
            build_handlers(risk_settings),
            client,
            risk_client,
            shift,
        )
    await payment_pool.close()
    await risk_pool.close()


# ---------------------------------------------------------------------------
# payers belong to the caller that enrolled them
# ---------------------------------------------------------------------------


async def test_another_callers_payer_is_not_found_like_a_payer_that_does_not_exist(
    pair: Pair,
) -> None:
    who = new_payer()
    assert (await pair.pay(body(who, phone=new_phone()))).status_code == 202
    outbox_before = await pair.payment_pool.fetchval("SELECT count(*) FROM outbox")

    stolen = await pair.pay(body(who, phone=new_phone()), key=KEY_B)
    assert stolen.status_code == 404
    error = stolen.json()["error"]
    assert (error["code"], error["param"]) == ("not_found", "payer_id")
    # Nothing was stored or published for B, and its idempotency key was given back.
    assert await pair.payment_pool.fetchval("SELECT count(*) FROM outbox") == outbox_before
    assert (
        await pair.payment_pool.fetchval(
            "SELECT count(*) FROM payments WHERE caller = $1", caller_name(KEY_B)
        )
        == 0
    )
    unknown = await pair.client.get(f"/v1/payers/{new_payer()}", headers=auth(KEY_B))
    foreign = await pair.client.get(f"/v1/payers/{who}", headers=auth(KEY_B))
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json()["error"]["code"] == foreign.json()["error"]["code"] == "not_found"


async def test_codes_and_notices_go_to_the_enrolled_phone(pair: Pair) -> None:
    who, enrolled, attacker = new_payer(), new_phone(), new_phone()
    first = (await pair.pay(body(who, phone=enrolled))).json()
    later = await pair.pay(body(who, phone=attacker, amount=300_000))
    assert later.status_code == 202
    shown = later.json()
    assert shown["payer_phone"] == enrolled[:3] + "****" + enrolled[-4:]

    requested = (await pair.requested(shown["id"])).payment
    assert requested.payer_phone_masked == ""  # inside the blob since issue 11
    opened = await event_phone(
        pair.payment_pool, pair.sealer, requested.payer_phone_sealed, aad=phone_aad(shown["id"])
    )
    assert opened == enrolled
    # The step-up code risk sends for it goes to the enrolled phone too.
    [step_up] = [
        e for e in await pair.through_risk(shown["id"]) if e.event_type == "StepUpRequired"
    ]
    assert isinstance(step_up.payload, StepUpRequired)
    sealed = step_up.payload.payer_phone_sealed
    assert (
        await event_phone(pair.payment_pool, pair.sealer, sealed, aad=phone_aad(shown["id"]))
        == enrolled
    )
    assert first["payer_phone"] == shown["payer_phone"]


async def test_explicit_enrolment_is_masked_idempotent_and_its_owners(pair: Pair) -> None:
    who, phone, id_number = new_payer(), new_phone(), new_id_number()
    enrol = {"phone": phone, "id_number": id_number, "name": "张三"}
    first = await pair.client.put(f"/v1/payers/{who}", json=enrol, headers=auth())
    assert first.status_code == 200, first.text
    payer = first.json()
    assert payer == {
        "payer_id": who,
        "phone": phone[:3] + "****" + phone[-4:],
        "id_number": id_number[:6] + "********" + id_number[-4:],
        "name": "张*",
        "created_at": payer["created_at"],
    }
    again = await pair.client.put(f"/v1/payers/{who}", json=enrol, headers=auth())
    assert (again.status_code, again.json()) == (200, payer)
    assert (await pair.client.get(f"/v1/payers/{who}", headers=auth())).json() == payer

    other_phone = await pair.client.put(
        f"/v1/payers/{who}", json={**enrol, "phone": new_phone()}, headers=auth()
    )
    assert other_phone.status_code == 409
    assert other_phone.json()["error"]["code"] == "payer_conflict"
    theirs = await pair.client.put(f"/v1/payers/{who}", json=enrol, headers=auth(KEY_B))
    assert theirs.status_code == 404
    assert theirs.json()["error"]["code"] == "not_found"
    bad = await pair.client.put(
        f"/v1/payers/{who}", json={**enrol, "id_number": "110105194912310021"}, headers=auth()
    )
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "id_number")

    # A payment of the enrolled payer names its person for the cap, even for a child.
    # (by wallet: a medical account pays only for bound relatives, test_payer_codes.py)
    paid = await pair.pay(body(who, phone=new_phone(), relation="child", method="wallet"))
    requested = (await pair.requested(paid.json()["id"])).payment
    assert requested.payer_id_hash is not None
    assert requested.caller_id == caller_name(KEY_A)
    opened = await event_phone(
        pair.payment_pool,
        pair.sealer,
        requested.payer_phone_sealed,
        aad=phone_aad(requested.payment_id),
    )
    assert opened == phone


async def test_reading_or_acting_on_another_callers_payment_is_not_found(pair: Pair) -> None:
    paid = (await pair.pay(body(new_payer(), phone=new_phone(), amount=300_000))).json()
    await pair.through_risk(paid["id"])
    for method, path, data in (
        ("GET", f"/v1/payments/{paid['id']}", None),
        ("POST", f"/v1/payments/{paid['id']}/verification", {"code": "123456"}),
        ("POST", f"/v1/payments/{paid['id']}/verification/resend", None),
    ):
        answer = await pair.client.request(method, path, json=data, headers=auth(KEY_B))
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------
# the daily cap follows the person; only the owner reads it
# ---------------------------------------------------------------------------


async def test_one_person_under_two_payer_ids_shares_one_cap(pair: Pair) -> None:
    id_number = new_id_number()
    first, second = new_payer(), new_payer()
    outcomes = []
    for n, who in enumerate([first, second] * 5 + [second]):
        answer = await pair.pay(
            body(who, phone=f"1390000{n:04d}", id_number=id_number, amount=500_000)
        )
        risk_events = await pair.through_risk(answer.json()["id"])
        outcomes.append(risk_events[0].event_type)
    assert outcomes == ["StepUpRequired"] * 10 + ["RiskDeclined"]

    for who in (first, second):
        cap = await pair.daily_cap(who)
        assert cap.status_code == 200, cap.text
        assert (cap.json()["payer_id"], cap.json()["used"], cap.json()["remaining"]) == (
            who,
            5_000_000,
            0,
        )
    # Another caller, and a payer risk never saw: the same 404.
    foreign, unknown = await pair.daily_cap(first, KEY_B), await pair.daily_cap(new_payer())
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"


async def test_without_a_known_person_the_cap_follows_the_payer_id(pair: Pair) -> None:
    who = new_payer()
    answer = await pair.pay(body(who, phone=new_phone(), relation="parent", method="wallet"))
    assert (await pair.requested(answer.json()["id"])).payment.payer_id_hash is None
    await pair.through_risk(answer.json()["id"])
    cap = (await pair.daily_cap(who)).json()
    assert cap["used"] == 38000


# ---------------------------------------------------------------------------
# step-up codes: resends per challenge, a hard expiry, codes per phone
# ---------------------------------------------------------------------------


async def stepped_up(pair: Pair, phone: str | None = None) -> tuple[str, str]:
    """A payment waiting for its code, and the phone the code went to."""
    phone = phone or new_phone()
    answer = await pair.pay(body(new_payer(), phone=phone, amount=300_000))
    payment_id = answer.json()["id"]
    events = await pair.through_risk(payment_id)
    assert [e.event_type for e in events] == ["StepUpRequired"], events
    return payment_id, phone


async def resend(pair: Pair, payment_id: str) -> httpx.Response:
    return await pair.client.post(f"/v1/payments/{payment_id}/verification/resend", headers=auth())


async def test_a_challenge_gets_three_new_codes_at_most(pair: Pair) -> None:
    payment_id, _ = await stepped_up(pair)
    for n in range(1, 4):
        pair.shift[0] = timedelta(seconds=61 * n)
        assert (await resend(pair, payment_id)).status_code == 200
    pair.shift[0] = timedelta(seconds=61 * 4)
    refused = await resend(pair, payment_id)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "resend_limit_reached"


async def test_a_challenge_dies_fifteen_minutes_after_it_opened(pair: Pair) -> None:
    payment_id, _ = await stepped_up(pair)
    opened = datetime.fromisoformat(
        (await pair.client.get(f"/v1/payments/{payment_id}", headers=auth())).json()["created_at"]
    )
    for minutes in (4, 8, 12):  # one resend before each code expires: alive so far
        pair.shift[0] = timedelta(minutes=minutes)
        shown = (await resend(pair, payment_id)).json()
    expires = datetime.fromisoformat(shown["next_action"]["expires_at"])
    assert expires <= opened + timedelta(minutes=15, seconds=5)  # not 12 + 5 minutes

    # At the hard expiry risk's sweeper kills it: declined, reservation released.
    swept = await ExpirySweeper(
        pair.risk_pool, rules=pair.risk_settings.rules(), topics=pair.risk_settings.topics
    ).sweep_once(now=utcnow() + timedelta(minutes=15, seconds=10))
    assert swept == 1
    events = [e.event_type for e in await pair.to_payment()]
    assert events[-2:] == ["StepUpFailed", "LimitReleased"]
    payment = (await pair.client.get(f"/v1/payments/{payment_id}", headers=auth())).json()
    assert (payment["status"], payment["decline_code"]) == ("declined", "verification_expired")


async def test_codes_per_phone_are_limited_across_payments(pair: Pair) -> None:
    phone = new_phone()
    first, _ = await stepped_up(pair, phone)
    for _ in range(4):  # five codes to one phone within the hour
        await stepped_up(pair, phone)

    pair.shift[0] = timedelta(seconds=61)
    limited = await resend(pair, first)
    assert limited.status_code == 429
    error = limited.json()["error"]
    assert error["code"] == "sms_rate_limited"
    assert 0 < error["retry_after"] <= 3600
    assert limited.headers["Retry-After"] == str(error["retry_after"])

    # A sixth payment that needs a code is declined, saying why, with nothing reserved.
    sixth = await pair.pay(body(new_payer(), phone=phone, amount=300_000))
    [declined] = await pair.through_risk(sixth.json()["id"])
    assert declined.event_type == "RiskDeclined"
    shown = (await pair.client.get(f"/v1/payments/{sixth.json()['id']}", headers=auth())).json()
    assert (shown["status"], shown["decline_code"]) == ("declined", "verification_failed")
    assert "this phone already got 5 codes" in shown["decline_message"]
    # A payment below the step-up threshold needs no code: not limited.
    small = await pair.pay(body(new_payer(), phone=phone, amount=1000))
    assert [e.event_type for e in await pair.through_risk(small.json()["id"])] == ["RiskApproved"]
