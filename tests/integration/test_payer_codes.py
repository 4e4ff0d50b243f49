"""Payer codes through the payment API on PostgreSQL, and notify's handling of them:
verified phone change (issue 11), family accounts and records sessions (issue 12),
PayerEnrolled.

payment and notify each get a fresh database; the codes are read the way notify reads
them (the outbox's PayerCodeIssued, opened with the seal key), and handed to notify's
handlers as the consumer would (test_family e2e runs them over Kafka and the SMS
gateway). Each test fails on the code before payer codes: the routes did not exist, a
medical account paid for anyone, and enrolments published nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from services.notify.__main__ import MIGRATIONS as NOTIFY_MIGRATIONS
from services.notify.config import NotifySettings
from services.notify.domain import text_aad
from services.notify.handlers import build_handlers as notify_handlers
from services.payment.__main__ import MIGRATIONS as PAYMENT_MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.validation import id_check_char
from shared.crypto import Sealer, code_aad, phone_aad
from shared.db import create_pool, migrate
from shared.events import Event, PayerCodeIssued, PayerEnrolled, PaymentRequested, decode
from shared.money import utcnow
from shared.sessions import records_session_valid
from tests.phones import event_phone
from tests.support import random_prefix

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "yb_test_family_a", "yb_test_family_b"


def caller_name(key: str) -> str:
    return "caller_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def new_payer() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def new_phone() -> str:
    return "139" + f"{uuid.uuid4().int % 10**8:08d}"


def new_id_number(year: int = 1985) -> str:
    first17 = f"110105{year}0101{uuid.uuid4().int % 1000:03d}"
    return first17 + id_check_char(first17)


def premium(payer_id: str, id_number: str, relation: str, method: str = "medical_account") -> Any:
    return {
        "payer_id": payer_id,
        "payer_phone": new_phone(),
        "beneficiary": {"id_number": id_number, "name": "李四", "relation": relation},
        "purpose": {
            "type": "premium",
            "scheme": "commercial_health",
            "region": "110000",
            "period": "2027",
        },
        "amount": 38000,
        "currency": "CNY",
        "method": method,
    }


@dataclass
class Api:
    settings: PaymentSettings
    pool: asyncpg.Pool
    notify_pool: asyncpg.Pool
    client: httpx.AsyncClient
    shift: list[timedelta]

    @property
    def sealer(self) -> Sealer:
        return self.settings.sealer()

    async def events(self, event_type: str) -> list[Event]:
        rows = await self.pool.fetch(
            "SELECT value FROM outbox WHERE event_type = $1 ORDER BY id", event_type
        )
        return [decode(bytes(r["value"])) for r in rows]

    async def issued(self, code_id: str) -> tuple[Event, PayerCodeIssued]:
        for event in await self.events("PayerCodeIssued"):
            assert isinstance(event.payload, PayerCodeIssued)
            if event.payload.code_id == code_id:
                return event, event.payload
        raise AssertionError(f"no PayerCodeIssued for {code_id}")

    async def code(self, code_id: str) -> str:
        _, p = await self.issued(code_id)
        return self.sealer.open(p.code_sealed, aad=code_aad(p.code_id))

    async def enrol(
        self, payer_id: str, phone: str, id_number: str, name: str = "张三", key: str = KEY_A
    ) -> httpx.Response:
        return await self.client.put(
            f"/v1/payers/{payer_id}",
            json={"phone": phone, "id_number": id_number, "name": name},
            headers=auth(key),
        )

    async def post(self, path: str, data: Any = None, key: str = KEY_A) -> httpx.Response:
        return await self.client.post(path, json=data, headers=auth(key))

    async def pay(self, data: Any, key: str = KEY_A) -> httpx.Response:
        return await self.client.post(
            "/v1/payments", json=data, headers={**auth(key), "Idempotency-Key": uuid.uuid4().hex}
        )


@pytest.fixture
async def api(new_database: Callable[[], Awaitable[str]]) -> AsyncIterator[Api]:
    dsn, notify_dsn = await new_database(), await new_database()
    await migrate(dsn, PAYMENT_MIGRATIONS)
    await migrate(notify_dsn, NOTIFY_MIGRATIONS)
    pool, notify_pool = await create_pool(dsn), await create_pool(notify_dsn)
    settings = PaymentSettings(
        environment="development",
        dsn=dsn,
        topic_prefix=random_prefix(),
        api_keys=f"{KEY_A},{KEY_B}",
        payer_codes_per_phone_hour=3,
    )
    shift = [timedelta(0)]

    def clock() -> datetime:
        return utcnow() + shift[0]

    app = create_app(settings, pool, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://p"
    ) as client:
        yield Api(settings, pool, notify_pool, client, shift)
    await pool.close()
    await notify_pool.close()


# ---------------------------------------------------------------------------
# phone change (issue 11)
# ---------------------------------------------------------------------------


async def test_a_phone_change_is_confirmed_by_a_code_to_the_new_phone(api: Api) -> None:
    who, old, new, id_number = new_payer(), new_phone(), new_phone(), new_id_number()
    assert (await api.enrol(who, old, id_number)).status_code == 200

    asked = await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new})
    assert asked.status_code == 202, asked.text
    change = asked.json()
    assert (change["phone"], change["status"]) == (new[:3] + "****" + new[-4:], "pending")
    _, issued = await api.issued(change["id"])
    assert issued.purpose == "phone_change"
    assert issued.phone_masked == ""  # inside the sealed phone since issue 11
    assert (
        await event_phone(api.pool, api.sealer, issued.phone_sealed, aad=phone_aad(change["id"]))
        == new
    )
    assert issued.replaced_phone_sealed is not None
    assert (
        await event_phone(
            api.pool, api.sealer, issued.replaced_phone_sealed, aad=phone_aad(change["id"])
        )
        == old
    )
    # Nothing clear on the way out: not the phones, not the code.
    code = await api.code(change["id"])
    raw = b"".join(bytes(r["value"]) for r in await api.pool.fetch("SELECT value FROM outbox"))
    for secret in (old, new, code):
        assert secret.encode() not in raw
    stored = await api.pool.fetchrow("SELECT * FROM payer_codes WHERE code_id = $1", change["id"])
    assert code not in str(dict(stored))

    path = f"/v1/payers/{who}/phone-changes/{change['id']}/verification"
    wrong = await api.post(path, {"code": "000000" if code != "000000" else "111111"})
    assert wrong.status_code == 422
    assert (wrong.json()["error"]["code"], wrong.json()["error"]["attempts_left"]) == (
        "verification_failed",
        4,
    )
    # Another caller: the same 404 as a payer that does not exist.
    for key in (KEY_B,):
        foreign = await api.post(path, {"code": code}, key=key)
        assert (foreign.status_code, foreign.json()["error"]["code"]) == (404, "not_found")
        ask = await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new}, key=key)
        assert ask.status_code == 404

    done = await api.post(path, {"code": code})
    assert done.status_code == 200, done.text
    assert done.json()["phone"] == change["phone"]
    assert (await api.client.get(f"/v1/payers/{who}", headers=auth())).json()["phone"] == (
        change["phone"]
    )
    again = await api.post(path, {"code": code})
    assert (again.status_code, again.json()["error"]["code"]) == (409, "code_used")

    # Later payments (and so their codes and notices) go to the new phone; enrolling
    # again with it is the same payer, with the old one a conflict.
    paid = await api.pay(premium(who, id_number, "self", method="wallet"))
    assert paid.status_code == 202, paid.text
    [requested] = [
        e.payload
        for e in await api.events("PaymentRequested")
        if isinstance(e.payload, PaymentRequested)
        and e.payload.payment.payment_id == paid.json()["id"]
    ]
    sealed = requested.payment.payer_phone_sealed
    assert await event_phone(api.pool, api.sealer, sealed, aad=phone_aad(paid.json()["id"])) == new
    assert (await api.enrol(who, new, id_number)).status_code == 200
    assert (await api.enrol(who, old, id_number)).status_code == 409
    same = await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new})
    assert (same.status_code, same.json()["error"]["code"]) == (422, "phone_unchanged")


async def test_expired_exhausted_and_superseded_codes(api: Api) -> None:
    who = new_payer()
    await api.enrol(who, new_phone(), new_id_number())

    first = (await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new_phone()})).json()
    code = await api.code(first["id"])
    soon = await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new_phone()})
    assert soon.status_code == 429
    assert soon.json()["error"]["code"] == "resend_too_soon"
    assert 1 <= int(soon.headers["Retry-After"]) <= 60

    api.shift[0] = timedelta(minutes=5)
    late = await api.post(
        f"/v1/payers/{who}/phone-changes/{first['id']}/verification", {"code": code}
    )
    assert (late.status_code, late.json()["error"]["code"]) == (410, "code_expired")

    second = (await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new_phone()})).json()
    right = await api.code(second["id"])
    api.shift[0] = timedelta(minutes=6, seconds=1)
    third = (await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new_phone()})).json()
    old = await api.post(
        f"/v1/payers/{who}/phone-changes/{second['id']}/verification", {"code": right}
    )
    assert (old.status_code, old.json()["error"]["code"]) == (410, "code_superseded")

    path = f"/v1/payers/{who}/phone-changes/{third['id']}/verification"
    code = await api.code(third["id"])
    wrong = "000000" if code != "000000" else "111111"
    answers = [(await api.post(path, {"code": wrong})).json()["error"] for _ in range(5)]
    assert [a["attempts_left"] for a in answers] == [4, 3, 2, 1, 0]
    dead = await api.post(path, {"code": code})
    assert (dead.status_code, dead.json()["error"]["code"]) == (410, "code_exhausted")
    unknown = await api.post(
        f"/v1/payers/{who}/phone-changes/pc_nothing/verification", {"code": code}
    )
    assert unknown.status_code == 404


async def test_a_phone_gets_a_limited_number_of_codes_an_hour(api: Api) -> None:
    who = new_payer()
    await api.enrol(who, new_phone(), new_id_number())
    answers = []
    for n in range(4):
        api.shift[0] = timedelta(seconds=61 * n)
        answers.append(await api.post(f"/v1/payers/{who}/records-sessions"))
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert answers[-1].json()["error"]["code"] == "sms_rate_limited"
    assert int(answers[-1].headers["Retry-After"]) > 3000


# ---------------------------------------------------------------------------
# family accounts (issue 12)
# ---------------------------------------------------------------------------


async def test_a_bound_relative_may_be_paid_for_from_the_medical_account(api: Api) -> None:
    me, mother, stranger = new_payer(), new_payer(), new_payer()
    mother_phone, mother_id, stranger_id = new_phone(), new_id_number(1955), new_id_number(1960)
    await api.enrol(me, new_phone(), new_id_number(), name="张三")
    await api.enrol(mother, mother_phone, mother_id, name="王秀英")
    await api.enrol(stranger, new_phone(), stranger_id, name="赵六")

    refused = await api.pay(premium(me, mother_id, "parent"))
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("relative_not_bound", "beneficiary")

    asked = await api.post(
        f"/v1/payers/{me}/relatives", {"relative_payer_id": mother, "relation": "parent"}
    )
    assert asked.status_code == 202, asked.text
    pending = asked.json()
    assert (pending["status"], pending["name"], pending["relation"]) == (
        "pending",
        "王**",
        "parent",
    )
    assert pending["id_number"] == mother_id[:6] + "********" + mother_id[-4:]
    [event] = [e for e in await api.events("PayerCodeIssued") if e.payload.payer_id == me]  # type: ignore[attr-defined]
    assert isinstance(event.payload, PayerCodeIssued)
    assert (event.payload.relation, event.payload.payer_name_masked) == ("parent", "张*")
    # The code goes to the relative's enrolled phone: her consent.
    sealed = event.payload.phone_sealed
    assert (
        await event_phone(api.pool, api.sealer, sealed, aad=phone_aad(event.payload.code_id))
        == mother_phone
    )
    code = await api.code(event.payload.code_id)
    # Still pending: not yet a bound relative.
    assert (await api.pay(premium(me, mother_id, "parent"))).status_code == 422

    path = f"/v1/payers/{me}/relatives/{mother}/verification"
    assert (await api.post(path, {"code": code}, key=KEY_B)).status_code == 404
    bound = await api.post(path, {"code": code})
    assert bound.status_code == 200, bound.text
    assert bound.json()["status"] == "bound" and bound.json()["bound_at"] is not None
    listed = await api.client.get(f"/v1/payers/{me}/relatives", headers=auth())
    assert [(r["relative_payer_id"], r["status"]) for r in listed.json()["relatives"]] == [
        (mother, "bound")
    ]
    assert (
        await api.client.get(f"/v1/payers/{me}/relatives", headers=auth(KEY_B))
    ).status_code == 404

    paid = await api.pay(premium(me, mother_id, "parent"))
    assert paid.status_code == 202, paid.text
    # Wallets and bank cards pay for anyone, as before; the medical account not for a stranger.
    assert (await api.pay(premium(me, stranger_id, "sibling", method="wallet"))).status_code == 202
    assert (await api.pay(premium(me, stranger_id, "sibling"))).status_code == 422
    again = await api.post(
        f"/v1/payers/{me}/relatives", {"relative_payer_id": mother, "relation": "parent"}
    )
    assert (again.status_code, again.json()["error"]["code"]) == (409, "already_bound")

    # Unbinding: the payment already requested stands; new ones are refused.
    gone = await api.client.delete(f"/v1/payers/{me}/relatives/{mother}", headers=auth())
    assert (gone.status_code, gone.json()["status"]) == (200, "unbound")
    status = await api.pool.fetchval("SELECT status FROM payments WHERE id = $1", paid.json()["id"])
    assert status != "declined"
    assert (await api.pay(premium(me, mother_id, "parent"))).json()["error"]["code"] == (
        "relative_not_bound"
    )
    foreign = await api.client.delete(f"/v1/payers/{me}/relatives/{mother}", headers=auth(KEY_B))
    assert foreign.status_code == 404


async def test_who_can_be_bound(api: Api) -> None:
    me, child, theirs = new_payer(), new_payer(), new_payer()
    await api.enrol(me, new_phone(), new_id_number())
    await api.enrol(theirs, new_phone(), new_id_number(), key=KEY_B)
    # A payer enrolled by a payment for someone else: its person is unknown.
    assert (
        await api.pay(premium(child, new_id_number(2015), "child", method="wallet"))
    ).status_code == 202

    def bind(relative: str, key: str = KEY_A) -> Awaitable[httpx.Response]:
        return api.post(
            f"/v1/payers/{me}/relatives", {"relative_payer_id": relative, "relation": "child"}, key
        )

    unknown_person = await bind(child)
    assert (unknown_person.status_code, unknown_person.json()["error"]["code"]) == (
        422,
        "relative_not_identified",
    )
    other_callers = await bind(theirs)
    assert (other_callers.status_code, other_callers.json()["error"]["param"]) == (
        404,
        "relative_payer_id",
    )
    itself = await bind(me)
    assert (itself.status_code, itself.json()["error"]["code"]) == (422, "relative_is_payer")
    assert (await bind(child, key=KEY_B)).status_code == 404
    self_relation = await api.post(
        f"/v1/payers/{me}/relatives", {"relative_payer_id": child, "relation": "self"}
    )
    assert (self_relation.status_code, self_relation.json()["error"]["param"]) == (400, "relation")


# ---------------------------------------------------------------------------
# records sessions (issue 12)
# ---------------------------------------------------------------------------


async def test_a_records_session_token_comes_from_a_fresh_code(api: Api) -> None:
    who, phone = new_payer(), new_phone()
    await api.enrol(who, phone, new_id_number())
    assert (await api.post(f"/v1/payers/{who}/records-sessions", key=KEY_B)).status_code == 404
    opened = await api.post(f"/v1/payers/{who}/records-sessions")
    assert opened.status_code == 202, opened.text
    session = opened.json()["id"]
    _, issued = await api.issued(session)
    assert (
        await event_phone(api.pool, api.sealer, issued.phone_sealed, aad=phone_aad(session))
        == phone
    )
    code = await api.code(session)

    path = f"/v1/payers/{who}/records-sessions/{session}/verification"
    assert (await api.post(path, {"code": code}, key=KEY_B)).status_code == 404
    answer = await api.post(path, {"code": code})
    assert answer.status_code == 200, answer.text
    token, expires_at = answer.json()["token"], datetime.fromisoformat(answer.json()["expires_at"])
    assert timedelta(minutes=9) < expires_at - utcnow() <= timedelta(minutes=10)
    key = api.settings.records_session_key()
    now = utcnow()
    assert records_session_valid(key, token, caller=caller_name(KEY_A), payer_id=who, now=now)
    assert not records_session_valid(key, token, caller=caller_name(KEY_B), payer_id=who, now=now)
    assert not records_session_valid(
        key, token, caller=caller_name(KEY_A), payer_id=who, now=expires_at
    )
    assert (await api.post(path, {"code": code})).status_code == 409  # single use


# ---------------------------------------------------------------------------
# PayerEnrolled
# ---------------------------------------------------------------------------


async def test_each_enrolment_publishes_payer_enrolled(api: Api) -> None:
    explicit, by_payment, id_number, phone = new_payer(), new_payer(), new_id_number(), new_phone()
    assert (await api.enrol(explicit, phone, id_number)).status_code == 200
    assert (await api.enrol(explicit, phone, id_number)).status_code == 200
    paid = await api.pay(premium(by_payment, new_id_number(), "self", method="wallet"))
    assert paid.status_code == 202

    enrolled = {
        e.payload.payer_id: (e.envelope.key, e.payload)
        for e in await api.events("PayerEnrolled")
        if isinstance(e.payload, PayerEnrolled)
    }
    events = [
        e for e in await api.events("PayerEnrolled") if e.envelope.key in (explicit, by_payment)
    ]
    assert len(events) == 2  # once each: enrolling again publishes nothing
    key, first = enrolled[explicit]
    assert (key, first.caller_id) == (explicit, caller_name(KEY_A))
    stored = await api.pool.fetchval(
        "SELECT id_number_hash FROM payers WHERE payer_id = $1", explicit
    )
    assert first.id_number_hash == stored is not None
    _, second = enrolled[by_payment]
    assert second.id_number_hash is not None and second.caller_id == caller_name(KEY_A)


# ---------------------------------------------------------------------------
# notify: one SMS per code, naming what it confirms
# ---------------------------------------------------------------------------


async def test_notify_queues_the_code_and_the_old_phone_notice_once(api: Api) -> None:
    who, old, new = new_payer(), new_phone(), new_phone()
    await api.enrol(who, old, new_id_number())
    change = (await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new})).json()
    event, _ = await api.issued(change["id"])
    code = await api.code(change["id"])
    handlers = notify_handlers(NotifySettings(environment="development"))
    handler = handlers["PayerCodeIssued"]
    for issued in await api.events("PersonKeyIssued"):  # notify's copies of the keys
        async with api.notify_pool.acquire() as conn, conn.transaction():
            await handlers["PersonKeyIssued"](conn, issued)
    for _ in range(2):  # a redelivered event queues nothing more
        async with api.notify_pool.acquire() as conn, conn.transaction():
            await handler(conn, event)

    rows = await api.notify_pool.fetch(
        "SELECT * FROM notifications WHERE payment_id = $1 ORDER BY kind", change["id"]
    )
    assert [(r["kind"], r["phone_masked"]) for r in rows] == [
        ("security_notice", old[:3] + "****" + old[-4:]),
        ("sms_code", new[:3] + "****" + new[-4:]),
    ]
    sealer = Sealer(api.settings.seal_key_bytes())
    notice, sms = (sealer.open(r["text_sealed"], aad=text_aad(r["id"])) for r in rows)
    assert f"验证码{code}" in sms and "您正在更换" in sms
    assert code not in notice and change["phone"] in notice
    assert all(code not in str(dict(r)) for r in rows)


async def test_no_code_or_clear_phone_reaches_the_logs(api: Api) -> None:
    who, old, new = new_payer(), new_phone(), new_phone()
    await api.enrol(who, old, new_id_number())
    with capture_logs() as logs:
        change = (await api.post(f"/v1/payers/{who}/phone-changes", {"phone": new})).json()
        code = await api.code(change["id"])
        path = f"/v1/payers/{who}/phone-changes/{change['id']}/verification"
        await api.post(path, {"code": "000000" if code != "000000" else "111111"})
        assert (await api.post(path, {"code": code})).status_code == 200
    events = {entry["event"] for entry in logs}
    assert {"payer_code_issued", "payer_code_checked", "payer_phone_changed"} <= events
    text = repr(logs)
    for secret in (code, old, new):
        assert secret not in text
