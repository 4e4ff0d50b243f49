"""The payment API and its handlers against a real PostgreSQL (fresh database per test)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.payment import store, validation
from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.config import PaymentSettings
from services.payment.handlers import build_handlers
from services.payment.intake import CREATE_ROUTE, fingerprinted
from services.payment.schemas import PaymentCreate
from shared.consumer import Batched
from shared.crypto import KeyPurpose
from shared.db import create_pool, migrate
from shared.events import (
    Event,
    EventPayload,
    JournalEntryPosted,
    JournalLine,
    PostingRejected,
    ReceiptRef,
    RiskApproved,
    RiskDeclined,
    StepUpFailed,
    StepUpPassed,
    StepUpRequired,
    decode,
    new_event,
)
from tests.support import Infra, random_prefix

pytestmark = pytest.mark.integration

KEY = "yb_test_caller_one"
OTHER_KEY = "yb_test_caller_two"
AUTH = {"Authorization": f"Bearer {KEY}"}
PHONE = "13800138000"
ID_NUMBER = "11010519491231002X"


def caller_name(key: str) -> str:
    return "caller_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def body(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "payer_id": f"u-{uuid.uuid4().hex[:8]}",
        "payer_phone": PHONE,
        "beneficiary": {"id_number": ID_NUMBER, "name": "张三", "relation": "self"},
        "purpose": {
            "type": "premium",
            "scheme": "commercial_health",  # no schedule: any amount (test_premiums.py)
            "region": "110000",
            "period": "2027",
        },
        "amount": 38000,
        "currency": "CNY",
        "method": "medical_account",  # bank cards wait for the bank: test_payment_bank.py
    }
    data.update(overrides)
    return data


def headers(key: str | None = None) -> dict[str, str]:
    return {**AUTH, "Idempotency-Key": key or uuid.uuid4().hex}


@dataclass
class Service:
    settings: PaymentSettings
    pool: asyncpg.Pool
    client: httpx.AsyncClient

    async def create(self, data: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.client.post("/v1/payments", json=data or body(), headers=headers())
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    async def feed(self, payload: EventPayload, producer: Any = "risk") -> None:
        """Apply one event through the consumer's handler, in a transaction."""
        envelope = new_event(
            payload,
            producer=producer,
            key=getattr(payload, "payer_id", "x"),
            correlation_id=getattr(payload, "payment_id", None),
        )
        async with self.pool.acquire() as conn, conn.transaction():
            handler = build_handlers(self.settings)[payload.event_type]
            await handler(conn, Event(envelope, payload))

    async def outbox(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT topic, key, event_type, value FROM outbox ORDER BY id")
        events = []
        for row in rows:
            event = decode(bytes(row["value"]))
            if event.event_type == "PayerEnrolled":
                continue  # a payer's, not a payment's (tests/integration/test_payer_codes.py)
            if payment_id is None or event.envelope.correlation_id == payment_id:
                events.append(
                    {
                        "topic": row["topic"],
                        "key": row["key"],
                        "type": row["event_type"],
                        "event": event,
                        "raw": bytes(row["value"]).decode(),
                    }
                )
        return events


@pytest.fixture
async def service(
    infra: Infra, new_database: Callable[[], Awaitable[str]]
) -> AsyncIterator[Service]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn)
    settings = PaymentSettings(
        environment="development",
        dsn=dsn,
        topic_prefix=random_prefix(),
        api_keys=f"{KEY},{OTHER_KEY}",
        risk_url="http://127.0.0.1:9",  # nothing listens: risk is unreachable
        risk_timeout_seconds=2.0,
        kafka_bootstrap=infra.kafka_bootstrap,
        premium_schedule_enforced=True,  # off by default (services/payment/config.py)
        premium_paid_once=True,
    )
    app = create_app(settings, pool)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://payment") as client:
        yield Service(settings, pool, client)
    await pool.close()


# ---------------------------------------------------------------------------
# POST /v1/payments
# ---------------------------------------------------------------------------


async def test_accepts_a_payment_and_stages_payment_requested(service: Service) -> None:
    data = body()
    response = await service.client.post("/v1/payments", json=data, headers=headers())
    assert response.status_code == 202
    payment = response.json()
    assert payment["status"] == "processing"
    assert payment["next_action"] is None
    assert payment["receipt"] is None
    assert payment["decline_code"] is None
    assert payment["amount"] == 38000
    assert payment["payer_phone"] == "138****8000"
    assert payment["beneficiary"] == {
        "id_number": "110105********002X",
        "name": "张三",
        "relation": "self",
    }
    assert payment["purpose"] == data["purpose"]

    [staged] = await service.outbox(payment["id"])
    assert staged["type"] == "PaymentRequested"
    assert staged["topic"] == service.settings.topics.payments
    assert staged["key"] == data["payer_id"]
    envelope = staged["event"].envelope
    assert envelope.correlation_id == payment["id"]
    assert envelope.causation_id is None
    details = staged["event"].payload.payment
    assert details.payee_id == "bureau:110000"
    assert details.payee_name == "北京市医疗保障局"
    # Issue 11: the name and masked ID number travel sealed under the person's key.
    assert (details.beneficiary.name, details.beneficiary.id_number_masked) == ("", "")
    assert details.beneficiary.personal is not None
    assert "张三" not in staged["raw"] and "110105********002X" not in staged["raw"]

    # Privacy: neither the event nor the row holds the clear phone or ID number.
    row = await service.pool.fetchrow("SELECT * FROM payments WHERE id = $1", payment["id"])
    assert row is not None
    row_text = json.dumps({k: str(v) for k, v in dict(row).items()}, ensure_ascii=False)
    for text in (staged["raw"], row_text):
        assert PHONE not in text
        assert ID_NUMBER not in text


async def test_wallet_topup_pays_into_the_wallet(service: Service) -> None:
    data = body(
        purpose={"type": "wallet_topup", "region": "310000"}, amount=10000, method="bank_card"
    )
    payment = await service.create(data)
    [staged] = await service.outbox(payment["id"])
    details = staged["event"].payload.payment
    assert (details.payee_id, details.payee_name) == (f"wallet:{data['payer_id']}", "零钱")


async def test_replay_returns_the_first_answer(service: Service) -> None:
    data, h = body(), headers()
    first = await service.client.post("/v1/payments", json=data, headers=h)
    # Same body, other key order: still the same request.
    reordered = dict(reversed(list(data.items())))
    second = await service.client.post("/v1/payments", json=reordered, headers=h)
    assert first.status_code == second.status_code == 202
    assert second.content == first.content
    assert second.headers.get("idempotent-replayed") == "true"
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 1
    assert [e["type"] for e in await service.outbox()] == ["PersonKeyIssued", "PaymentRequested"]


async def test_same_key_other_body_is_refused(service: Service) -> None:
    h = headers()
    data = body()
    assert (await service.client.post("/v1/payments", json=data, headers=h)).status_code == 202
    other = copy.deepcopy(data)
    other["amount"] = 38001
    response = await service.client.post("/v1/payments", json=other, headers=h)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 1


async def test_keys_are_per_caller(service: Service) -> None:
    h = headers()
    first = await service.client.post("/v1/payments", json=body(), headers=h)
    other_caller = {**h, "Authorization": f"Bearer {OTHER_KEY}"}
    second = await service.client.post("/v1/payments", json=body(), headers=other_caller)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


async def test_concurrent_identical_requests_make_one_payment(service: Service) -> None:
    data = body()
    for _ in range(3):
        h = headers()
        responses = await asyncio.gather(
            *(service.client.post("/v1/payments", json=data, headers=h) for _ in range(4))
        )
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {202, 409}, [r.text for r in responses]
        assert 202 in statuses
        ids = {r.json()["id"] for r in responses if r.status_code == 202}
        assert len(ids) == 1
        for r in responses:
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "request_in_flight"
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 3
    staged = [e["type"] for e in await service.outbox()]
    assert staged.count("PaymentRequested") == 3
    assert staged.count("PersonKeyIssued") == 1  # one person (one ID number): one key


async def _fingerprint(service: Service, data: dict[str, Any]) -> str:
    parsed = fingerprinted(PaymentCreate.model_validate(data))
    return validation.request_fingerprint(
        service.settings.hash_key_for(KeyPurpose.FINGERPRINT), CREATE_ROUTE, parsed
    )


async def test_in_flight_key_answers_409_then_is_taken_over_when_stale(service: Service) -> None:
    data, h = body(), headers()
    await service.pool.execute(
        "INSERT INTO idempotency_keys (caller, idem_key, request_hash, state, owner, expires_at)"
        " VALUES ($1, $2, $3, 'in_flight', $4, now() + interval '1 day')",
        caller_name(KEY),
        h["Idempotency-Key"],
        await _fingerprint(service, data),
        uuid.uuid4(),
    )
    response = await service.client.post("/v1/payments", json=data, headers=h)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "request_in_flight"
    assert response.json()["error"]["param"] == "Idempotency-Key"

    # The first owner crashed: 60 s later its claim is taken over.
    await service.pool.execute(
        "UPDATE idempotency_keys SET locked_at = now() - interval '60 seconds'"
    )
    response = await service.client.post("/v1/payments", json=data, headers=h)
    assert response.status_code == 202
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 1


async def test_a_request_in_flight_holds_its_key_and_a_crash_leaves_nothing(
    service: Service,
) -> None:
    data, h = body(), headers()
    lock = store.key_lock_id(caller_name(KEY), h["Idempotency-Key"])
    async with service.pool.acquire() as first:
        working = first.transaction()  # the first request, still in its transaction
        await working.start()
        assert await first.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock)
        response = await service.client.post("/v1/payments", json=data, headers=h)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "request_in_flight"
        await working.rollback()  # it crashed: its transaction leaves nothing behind
    assert await service.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0
    response = await service.client.post("/v1/payments", json=data, headers=h)
    assert response.status_code == 202
    replay = await service.client.post("/v1/payments", json=data, headers=h)
    assert replay.content == response.content
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 1


async def test_keys_last_a_day_and_are_purged_after(service: Service) -> None:
    h = headers()
    await service.client.post("/v1/payments", json=body(), headers=h)
    expires = await service.pool.fetchval(
        "SELECT expires_at - created_at FROM idempotency_keys WHERE idem_key = $1",
        h["Idempotency-Key"],
    )
    assert expires >= timedelta(hours=24)
    assert await store.purge_keys(service.pool) == 0
    await service.pool.execute("UPDATE idempotency_keys SET expires_at = now() - interval '1s'")
    assert await store.purge_keys(service.pool) == 1
    # An expired key starts afresh, even with another body.
    again = await service.client.post("/v1/payments", json=body(amount=100), headers=h)
    assert again.status_code == 202
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 2


def _bad(path: str, value: Any) -> dict[str, Any]:
    data = body()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "param"),
    [
        (_bad("payer_phone", "12800138000"), "payer_phone"),
        (_bad("beneficiary.id_number", "110105194912310021"), "beneficiary.id_number"),
        (_bad("amount", 380.5), "amount"),
        (_bad("amount", "38000"), "amount"),
        (_bad("method", "alipay"), "method"),
        (_bad("currency", "USD"), "currency"),
        (_bad("purpose.region", "1100"), "purpose.region"),
        (_bad("beneficiary.relation", "neighbour"), "beneficiary.relation"),
        (body(purpose={"type": "wallet_topup", "region": "110000"}, method="wallet"), "method"),
        (body(purpose={"type": "premium", "region": "110000", "period": "2027"}), "purpose.scheme"),
    ],
)
async def test_bad_input_is_400_naming_the_field(
    service: Service, data: dict[str, Any], param: str
) -> None:
    response = await service.client.post("/v1/payments", json=data, headers=headers())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert ID_NUMBER not in response.text
    assert await service.pool.fetchval("SELECT count(*) FROM payments") == 0


@pytest.mark.parametrize("key", [None, "", "x" * 256, "naïve-key"])
async def test_idempotency_key_is_required(service: Service, key: str | None) -> None:
    h = dict(AUTH)
    if key is not None:
        h["Idempotency-Key"] = key
    response = await service.client.post(
        "/v1/payments", json=body(), headers={k: v.encode() for k, v in h.items()}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"


async def test_not_json_is_400(service: Service) -> None:
    response = await service.client.post(
        "/v1/payments",
        content=b"{not json",
        headers={**headers(), "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


async def test_over_the_wallet_limit_is_422(service: Service) -> None:
    data = body(method="wallet", amount=200_001)
    response = await service.client.post("/v1/payments", json=data, headers=headers())
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("method_limit_exceeded", "amount")
    assert "2,000.00 CNY" in error["message"]
    assert (
        await service.client.post(
            "/v1/payments", json=body(method="wallet", amount=200_000), headers=headers()
        )
    ).status_code == 202


@pytest.mark.parametrize("auth", [None, "Bearer nope", "Basic eWI6eWI=", KEY])
async def test_every_call_needs_a_caller_key(service: Service, auth: str | None) -> None:
    h = {"Idempotency-Key": uuid.uuid4().hex}
    if auth is not None:
        h["Authorization"] = auth
    calls = [
        service.client.post("/v1/payments", json=body(), headers=h),
        service.client.get("/v1/payments/pay_x", headers=h),
        service.client.post("/v1/payments/pay_x/verification", json={"code": "123456"}, headers=h),
    ]
    for response in await asyncio.gather(*calls):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"


# ---------------------------------------------------------------------------
# GET /v1/payments/{id}
# ---------------------------------------------------------------------------


async def test_read_own_payment_only(service: Service) -> None:
    created = await service.create()
    mine = await service.client.get(f"/v1/payments/{created['id']}", headers=AUTH)
    assert mine.status_code == 200
    assert mine.json() == created
    theirs = await service.client.get(
        f"/v1/payments/{created['id']}", headers={"Authorization": f"Bearer {OTHER_KEY}"}
    )
    assert theirs.status_code == 404
    missing = await service.client.get("/v1/payments/pay_nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_openapi_names_the_models(service: Service) -> None:
    spec = (await service.client.get("/openapi.json")).json()
    assert {"PaymentCreate", "PaymentPublic", "VerificationCreate"} <= set(
        spec["components"]["schemas"]
    )
    assert (await service.client.get("/docs")).status_code == 200
    assert (await service.client.get("/healthz")).status_code == 200


# ---------------------------------------------------------------------------
# Handlers: risk.v1 and ledger.v1 move the payment
# ---------------------------------------------------------------------------


def cap_fields(payment: dict[str, Any]) -> dict[str, Any]:
    return {
        "payment_id": payment["id"],
        "payer_id": payment["payer_id"],
        "day": "2026-11-24",
        "cap": 5_000_000,
        "used": payment["amount"],
        "remaining": 5_000_000 - payment["amount"],
    }


def posted(payment: dict[str, Any], receipt: ReceiptRef | None, seq: int = 1) -> JournalEntryPosted:
    return JournalEntryPosted(
        seq=seq,
        transaction_id=f"tx_{uuid.uuid4().hex}",
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        kind="premium",
        lines=(
            JournalLine(account_id="bank:clearing", amount=-payment["amount"]),
            JournalLine(account_id="bureau:110000:premium", amount=payment["amount"]),
        ),
        posted_at=datetime.now(UTC),
        receipt=receipt,
        prev_hash="0" * 64,
        hash="1" * 64,
    )


def rejected(
    payment: dict[str, Any],
    message: str,
    *,
    account_id: str,
    balance: int = 0,
    amount: int | None = None,
    refund_id: str | None = None,
) -> PostingRejected:
    """The ledger's ``insufficient_funds`` refusal of ``payment``'s posting (or, with
    ``refund_id``, of that refund's)."""
    return PostingRejected(
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        decline_code="insufficient_funds",
        account_id=account_id,
        balance=balance,
        amount=payment["amount"] if amount is None else amount,
        message=message,
        refund_id=refund_id,
    )


async def status_of(service: Service, payment_id: str) -> dict[str, Any]:
    response = await service.client.get(f"/v1/payments/{payment_id}", headers=AUTH)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def test_approved_then_posted_succeeds_with_receipt(service: Service) -> None:
    payment = await service.create()
    await service.feed(RiskApproved(**cap_fields(payment)))
    assert (await status_of(service, payment["id"]))["status"] == "processing"
    receipt = ReceiptRef(code="11012627", number="0000000001", check_code="A1B2C3")
    await service.feed(posted(payment, receipt, seq=5), producer="ledger")
    shown = await status_of(service, payment["id"])
    assert shown["status"] == "succeeded"
    assert shown["receipt"] == {"code": "11012627", "number": "0000000001", "check_code": "A1B2C3"}

    events = await service.outbox(payment["id"])
    assert [e["type"] for e in events] == [
        "PaymentRequested",
        "PaymentAuthorized",
        "PaymentSucceeded",
    ]
    authorized, succeeded = events[1]["event"], events[2]["event"]
    assert authorized.payload.stepped_up is False
    assert authorized.envelope.causation_id is not None
    assert succeeded.payload.journal_seq == 5
    assert succeeded.payload.receipt == receipt
    assert all(e["key"] == payment["payer_id"] for e in events)

    # Redelivered, late and out-of-order events change nothing.
    await service.feed(RiskApproved(**cap_fields(payment)))
    await service.feed(posted(payment, receipt, seq=5), producer="ledger")
    await service.feed(
        rejected(payment, "late", account_id="wallet:x"),
        producer="ledger",
    )
    assert len(await service.outbox(payment["id"])) == 3
    assert (await status_of(service, payment["id"]))["status"] == "succeeded"


async def test_rejected_posting_fails(service: Service) -> None:
    payment = await service.create(body(method="wallet"))
    await service.feed(RiskApproved(**cap_fields(payment)))
    await service.feed(
        rejected(
            payment,
            "wallet balance 1.00 CNY is below 380.00 CNY; top up or pay by bank card",
            account_id=f"wallet:{payment['payer_id']}",
            balance=100,
        ),
        producer="ledger",
    )
    shown = await status_of(service, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("failed", "insufficient_funds")
    assert "top up" in shown["decline_message"]
    assert [e["type"] for e in await service.outbox(payment["id"])][-1] == "PaymentFailed"


async def test_risk_decline_declines(service: Service) -> None:
    payment = await service.create()
    await service.feed(
        RiskDeclined(
            **cap_fields(payment),
            decline_code="daily_limit_exceeded",
            message="daily cap 50,000.00 CNY reached",
        )
    )
    shown = await status_of(service, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("declined", "daily_limit_exceeded")
    assert [e["type"] for e in await service.outbox(payment["id"])][-1] == "PaymentDeclined"


async def step_up(service: Service, payment: dict[str, Any]) -> datetime:
    expires = datetime.now(UTC) + timedelta(minutes=5)
    await service.feed(
        StepUpRequired(
            **cap_fields(payment),
            challenge_id=f"ch_{uuid.uuid4().hex}",
            expires_at=expires,
            amount=payment["amount"],
            payee_name="北京市医疗保障局",
            code_sealed="v1.x",
            payer_phone_sealed="v1.y",
        )
    )
    return expires


async def test_step_up_then_passed_event_authorizes(service: Service) -> None:
    payment = await service.create()
    expires = await step_up(service, payment)
    shown = await status_of(service, payment["id"])
    assert shown["status"] == "requires_verification"
    assert shown["next_action"]["type"] == "sms_verification"
    assert datetime.fromisoformat(shown["next_action"]["expires_at"]) == expires

    # risk is unreachable: the code cannot be checked, nothing changes.
    response = await service.client.post(
        f"/v1/payments/{payment['id']}/verification", json={"code": "123456"}, headers=AUTH
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "risk_unavailable"

    await service.feed(
        StepUpPassed(payment_id=payment["id"], payer_id=payment["payer_id"], challenge_id="c")
    )
    shown = await status_of(service, payment["id"])
    assert (shown["status"], shown["next_action"]) == ("processing", None)
    events = await service.outbox(payment["id"])
    assert [e["type"] for e in events] == [
        "PaymentRequested",
        "PaymentVerificationRequired",
        "PaymentAuthorized",
    ]
    assert events[-1]["event"].payload.stepped_up is True

    response = await service.client.post(
        f"/v1/payments/{payment['id']}/verification", json={"code": "123456"}, headers=AUTH
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "verification_not_pending"
    assert "processing" in error["message"]


async def test_final_step_up_failure_declines(service: Service) -> None:
    payment = await service.create()
    await step_up(service, payment)
    not_final = StepUpFailed(
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        challenge_id="c",
        attempts_left=3,
        final=False,
        decline_code=None,
    )
    await service.feed(not_final)
    assert (await status_of(service, payment["id"]))["status"] == "requires_verification"
    await service.feed(
        not_final.model_copy(
            update={"attempts_left": 0, "final": True, "decline_code": "verification_expired"}
        )
    )
    shown = await status_of(service, payment["id"])
    assert (shown["status"], shown["decline_code"]) == ("declined", "verification_expired")


async def test_verification_input_checks(service: Service) -> None:
    payment = await service.create()
    bad = await service.client.post(
        f"/v1/payments/{payment['id']}/verification", json={"code": "12ab56"}, headers=AUTH
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "code"
    early = await service.client.post(
        f"/v1/payments/{payment['id']}/verification", json={"code": "123456"}, headers=AUTH
    )
    assert early.status_code == 409
    assert early.json()["error"]["code"] == "verification_not_pending"
    unknown = await service.client.post(
        "/v1/payments/pay_nope/verification", json={"code": "123456"}, headers=AUTH
    )
    assert unknown.status_code == 404


async def test_events_for_unknown_payments_are_ignored(service: Service) -> None:
    ghost = {"id": "pay_ghost", "payer_id": "u-ghost", "amount": 100}
    await service.feed(RiskApproved(**cap_fields(ghost)))
    await service.feed(posted(ghost, None), producer="ledger")
    assert await service.outbox() == []


async def test_a_run_of_events_leaves_what_each_alone_would(service: Service) -> None:
    """The ``Batched`` handlers (issue 13): a run of risk.v1 and ledger.v1 events
    handed to ``many`` leaves the states, outbox events (in order), webhook events and
    bank debits that each event's own handler leaves in turn, duplicates and events
    that do not apply included."""
    hook = await service.client.post(
        "/v1/webhook-endpoints",
        json={"url": "http://127.0.0.1:9/hooks/runs", "event_types": ["*"]},
        headers=AUTH,
    )
    assert hook.status_code == 201, hook.text
    handlers = build_handlers(service.settings)
    receipt = ReceiptRef(code="11012627", number="0000000001", check_code="A1B2C3")

    def story(*payments: dict[str, Any]) -> list[Any]:
        a, b, c, d, e = payments
        challenge = f"ch_{b['id']}"
        return [
            RiskApproved(**cap_fields(a)),
            StepUpRequired(
                **cap_fields(b),
                challenge_id=challenge,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
                amount=b["amount"],
                payee_name="北京市医疗保障局",
                code_sealed="v1.x",
                payer_phone_sealed="v1.y",
            ),
            RiskDeclined(**cap_fields(c), decline_code="daily_limit_exceeded", message="cap"),
            RiskApproved(**cap_fields(d)),
            RiskApproved(**cap_fields(e)),  # a bank debit staged
            posted(a, receipt, seq=7),
            RiskApproved(**cap_fields(a)),  # a duplicate stimulus: no-op
            StepUpPassed(payment_id=b["id"], payer_id=b["payer_id"], challenge_id=challenge),
            rejected(d, "no money", account_id="medical:x"),
            posted(c, None, seq=8),  # a declined payment's posting: does not apply
        ]

    async def run(by_run: bool) -> dict[str, Any]:
        payments = [await service.create() for _ in range(4)]
        payments.append(await service.create(body(method="bank_card")))  # waits for the bank
        position = {p["id"]: i for i, p in enumerate(payments)}
        since = await service.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        seq_since = await service.pool.fetchval("SELECT coalesce(max(seq), 0) FROM webhook_events")
        events = []
        for payload in story(*payments):
            envelope = new_event(
                payload, producer="risk", key=payload.payer_id, correlation_id=payload.payment_id
            )
            events.append(Event(envelope, payload))
        async with service.pool.acquire() as conn, conn.transaction():
            if by_run:
                batched = handlers[events[0].event_type]
                assert isinstance(batched, Batched)
                assert all(handlers[e.event_type].many == batched.many for e in events)  # type: ignore[attr-defined]
                await batched.many(conn, events)
            else:
                for event in events:
                    await handlers[event.event_type](conn, event)
        states = []
        for p in payments:
            shown = await status_of(service, p["id"])
            funds = shown.pop("funds", None) or {}  # times of this run: whether they are set
            states.append(
                {
                    **{
                        k: v
                        for k, v in shown.items()
                        if k not in ("id", "payer_id", "created_at", "updated_at")
                    },
                    "funds": {k: v is not None for k, v in funds.items()},
                }
            )
        outbox = await service.pool.fetch(
            "SELECT event_type, value FROM outbox WHERE id > $1 ORDER BY id", since
        )
        hooks = await service.pool.fetch(
            "SELECT payment_id, type FROM webhook_events WHERE seq > $1 ORDER BY seq", seq_since
        )
        debits = await service.pool.fetch(
            "SELECT payment_id, kind, state, amount FROM bank_calls WHERE payment_id = ANY($1)"
            " ORDER BY payment_id",
            list(position),
        )
        return {
            "states": states,
            "outbox": [
                (position[decode(bytes(r["value"])).envelope.correlation_id], r["event_type"])
                for r in outbox
            ],
            "webhooks": [(position[r["payment_id"]], r["type"]) for r in hooks],
            "debits": sorted((position[r["payment_id"]], r["kind"], r["state"]) for r in debits),
        }

    alone, together = await run(by_run=False), await run(by_run=True)
    for part in alone:
        assert together[part] == alone[part], part
    assert [s["status"] for s in alone["states"]] == [
        "succeeded",
        "processing",
        "declined",
        "failed",
        "processing",
    ]
    assert alone["debits"] == [(4, "debit", "calling")]
    assert len(alone["outbox"]) >= 4 and len(alone["webhooks"]) >= 4
