"""Erasure by crypto-shredding (issue 11) on real Kafka and PostgreSQL.

The payment API (its own database, its outbox relayed to prefixed topics) takes a
premium; the test plays risk and the bank (PaymentAuthorized with the bank's
confirmation, built from the PaymentRequested payment published) and, after posting,
payment's PaymentSucceeded. The real ledger consumer reads payments.v1 and the
compacted person-keys.v1. Then an operator erases the person: the ledger's copy of
the key goes, its receipt reads show 已删除 while the signature still verifies over the
stored face, yibao-audit replays CLEAN and counts the erased receipt, and a rebuild of
the projections from the log is byte-identical.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.ledger.api import create_app as create_ledger_app
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner, verify_face
from services.payment.__main__ import MIGRATIONS as PAYMENT_MIGRATIONS
from services.payment.api import create_app as create_payment_app
from services.payment.config import PaymentSettings
from shared.consumer import InboxConsumer
from shared.db import create_pool, migrate
from shared.events import (
    BankConfirmation,
    Envelope,
    JournalEntryPosted,
    PaymentAuthorized,
    PaymentRequested,
    PaymentSucceeded,
    encode,
    new_event,
)
from shared.outbox import OutboxRelay, make_producer
from shared.personal import ERASED
from shared.topic_reader import read_topic
from shared.topics import TopicNames
from tests.integration.test_ledger_audit import audit
from tests.integration.test_ledger_flow import (
    MIGRATIONS as LEDGER_MIGRATIONS,
)
from tests.integration.test_ledger_flow import (
    OPERATOR_KEY,
    WAIT,
    dump_projections,
    ledger_settings,
)
from tests.integration.test_payer_trust import new_id_number
from tests.support import Infra

pytestmark = pytest.mark.integration

CALLER_KEY = "yb_test_erasure_caller"


@dataclass
class Stack:
    topics: TopicNames
    bootstrap: str
    payment_pool: asyncpg.Pool
    ledger_pool: asyncpg.Pool
    ledger_dsn: str
    signer: ReceiptSigner
    payment: httpx.AsyncClient
    ledger: httpx.AsyncClient

    async def until(self, pool: asyncpg.Pool, query: str, want: Any) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT
        while (got := await pool.fetchval(query)) != want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{query!r}: waited for {want!r}, have {got!r}")
            await asyncio.sleep(0.2)

    async def publish(self, *envelopes: Envelope) -> None:
        producer = make_producer(self.bootstrap)
        await producer.start()
        try:
            for env in envelopes:
                await producer.send_and_wait(
                    self.topics.payments, value=encode(env), key=env.key.encode()
                )
        finally:
            await producer.stop()


@pytest.fixture
async def stack(
    infra: Infra, kafka_topics: TopicNames, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Stack]:
    payment_dsn, ledger_dsn = await new_database(), await new_database()
    await migrate(payment_dsn, PAYMENT_MIGRATIONS)
    await migrate(ledger_dsn, LEDGER_MIGRATIONS)
    payment_pool, ledger_pool = await create_pool(payment_dsn), await create_pool(ledger_dsn)
    settings = PaymentSettings(
        environment="development",
        dsn=payment_dsn,
        topic_prefix=kafka_topics.prefix,
        api_keys=CALLER_KEY,
        operator_api_keys=OPERATOR_KEY,
    )
    signer = ReceiptSigner(secrets.token_bytes(32))
    setup = PostingSetup(
        ledger_topic=kafka_topics.ledger,
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    consumer = InboxConsumer(
        name=f"{kafka_topics.prefix}ledger",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.payments, kafka_topics.person_keys],
        pool=ledger_pool,
        handlers=build_handlers(setup),
    )
    relays = [
        OutboxRelay(payment_dsn, infra.kafka_bootstrap, poll_interval=0.2),
        OutboxRelay(ledger_dsn, infra.kafka_bootstrap, poll_interval=0.2),
    ]
    tasks = [asyncio.create_task(w.run()) for w in (consumer, *relays)]
    payment_app = create_payment_app(settings, payment_pool)
    ledger_app = create_ledger_app(ledger_settings(1000), ledger_pool, signer=signer)
    try:
        async with (
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=payment_app), base_url="http://p"
            ) as payment,
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=ledger_app), base_url="http://l"
            ) as ledger,
        ):
            yield Stack(
                kafka_topics,
                infra.kafka_bootstrap,
                payment_pool,
                ledger_pool,
                ledger_dsn,
                signer,
                payment,
                ledger,
            )
    finally:
        consumer.stop()
        for relay in relays:
            relay.stop()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        await payment_pool.close()
        await ledger_pool.close()


def operator() -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_KEY}"}


def premium(payer_id: str, id_number: str) -> dict[str, Any]:
    return {
        "payer_id": payer_id,
        "payer_phone": "13912345678",
        "beneficiary": {"id_number": id_number, "name": "王小明", "relation": "self"},
        "purpose": {
            "type": "premium",
            "scheme": "urban_rural_resident",
            "region": "110000",
            "period": "2027",
        },
        "amount": 38000,
        "currency": "CNY",
        "method": "bank_card",
    }


async def test_erase_a_person_then_read_audit_and_rebuild(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    payer, id_number = f"u-{uuid.uuid4().hex[:10]}", new_id_number()
    create = {"Authorization": f"Bearer {CALLER_KEY}", "Idempotency-Key": uuid.uuid4().hex}
    created = await stack.payment.post(
        "/v1/payments", json=premium(payer, id_number), headers=create
    )
    assert created.status_code == 202, created.text
    payment_id = created.json()["id"]
    assert created.json()["beneficiary"]["name"] == "王小明"  # the caller's own answer

    # What payment published: the key on person-keys.v1, the payment with its blob and
    # no clear name or masked ID number.
    deadline = asyncio.get_running_loop().time() + WAIT
    while not (
        requested := [
            e
            for e in await read_topic(stack.bootstrap, stack.topics.payments)
            if isinstance(e.payload, PaymentRequested)
        ]
    ):
        assert asyncio.get_running_loop().time() < deadline, "no PaymentRequested"
        await asyncio.sleep(0.2)
    # PayerEnrolled (this payment enrols the payer) comes before the request.
    payload = next(e.payload for e in requested if isinstance(e.payload, PaymentRequested))
    assert payload.payment.beneficiary.personal is not None
    assert payload.payment.beneficiary.name == ""
    raw = await stack.payment_pool.fetch("SELECT value FROM outbox")
    assert all("王小明".encode() not in bytes(r["value"]) for r in raw)
    await stack.until(stack.ledger_pool, "SELECT count(*) FROM person_keys", 1)

    # Risk and the bank said yes: the ledger posts and issues the receipt.
    authorized = new_event(
        PaymentAuthorized(
            payment=payload.payment,
            stepped_up=False,
            bank_debit=BankConfirmation(
                reference=f"bk_{payment_id}", confirmed_at=datetime.now(UTC)
            ),
        ),
        producer="payment",
        key=payer,
        correlation_id=payment_id,
    )
    await stack.publish(authorized)
    await stack.until(stack.ledger_pool, "SELECT count(*) FROM receipts", 1)
    row = await stack.ledger_pool.fetchrow("SELECT code, number, check_code FROM receipts")
    assert row is not None
    path = f"/v1/receipts/{row['code']}/{row['number']}"
    before = (await stack.ledger.get(path, headers=operator())).json()
    assert before["personal"]["name"] == "王小明"
    assert "王小明" not in str(before["receipt"])
    page = await stack.ledger.get(
        path, params={"check_code": row["check_code"]}, headers={"Accept": "text/html"}
    )
    assert "王*" in page.text

    # payment's PaymentSucceeded, as it would publish it (the audit matches postings).
    entries = [
        e.payload
        for e in await read_topic(stack.bootstrap, stack.topics.ledger)
        if isinstance(e.payload, JournalEntryPosted)
    ]
    d = payload.payment
    succeeded = PaymentSucceeded(
        payment_id=d.payment_id,
        payer_id=d.payer_id,
        amount=d.amount,
        method=d.method,
        purpose_type=d.purpose.type,
        payee_name=d.payee_name,
        payer_phone_masked=d.payer_phone_masked,
        payer_phone_sealed=d.payer_phone_sealed,
        journal_seq=entries[0].seq,
        receipt=entries[0].receipt,
    )
    await stack.publish(
        new_event(succeeded, producer="payment", key=payer, correlation_id=d.payment_id)
    )

    # Erase (operator only), once; asked again, the same answer.
    assert (
        await stack.payment.post(
            "/v1/erasures",
            json={"payer_id": payer},
            headers={"Authorization": f"Bearer {CALLER_KEY}"},
        )
    ).status_code == 403
    erased = await stack.payment.post(
        "/v1/erasures", json={"id_number": id_number}, headers=operator()
    )
    assert erased.status_code == 200, erased.text
    answer = erased.json()
    assert len(answer["key_ids"]) == 1 and answer["payer_ids"] == [payer]
    assert answer["payments"] == 1 and "name" in answer["erased"]
    again = await stack.payment.post("/v1/erasures", json={"payer_id": payer}, headers=operator())
    assert again.status_code == 200 and again.json()["id"] == answer["id"]
    assert again.json()["replayed"] is True
    unknown = await stack.payment.post(
        "/v1/erasures", json={"id_number": new_id_number()}, headers=operator()
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    # payment keeps no personal data of the person; the key is gone everywhere.
    payer_row = await stack.payment_pool.fetchrow(
        "SELECT name, id_number_masked, phone_masked, phone_sealed FROM payers WHERE payer_id = $1",
        payer,
    )
    assert payer_row is not None and tuple(payer_row) == (None, None, "", "")
    assert (
        await stack.payment_pool.fetchval(
            "SELECT beneficiary->>'name' FROM payments WHERE id = $1", payment_id
        )
        == ERASED
    )
    phone = await stack.payment_pool.fetchrow(
        "SELECT payer_phone_masked, payer_phone_sealed FROM payments WHERE id = $1", payment_id
    )
    assert phone is not None and phone["payer_phone_masked"] == ERASED
    assert phone["payer_phone_sealed"].startswith("p1.")  # the blob, under the erased key
    replayed = await stack.payment.post(
        "/v1/payments", json=premium(payer, id_number), headers=create
    )
    assert replayed.json()["payer_phone"] == ERASED  # the stored answer is scrubbed too
    assert (
        await stack.payment_pool.fetchval(
            "SELECT count(*) FROM person_keys WHERE key_sealed IS NOT NULL"
        )
        == 0
    )
    await stack.until(stack.ledger_pool, "SELECT count(*) FROM person_keys", 0)

    # The ledger's reads: 已删除, and the signature still verifies over the stored face.
    after = (await stack.ledger.get(path, headers=operator())).json()
    assert after["personal"] == {"name": ERASED, "id_number_masked": ERASED}
    assert after["receipt"] == before["receipt"]
    assert verify_face(after["receipt"], after["signature"], stack.signer.public_raw)
    masked = (await stack.ledger.get(path, params={"check_code": row["check_code"]})).json()
    assert masked["receipt"]["insured"]["name"] == ERASED
    verified = (
        await stack.ledger.post(
            "/v1/receipts/verify",
            json={"code": row["code"], "number": row["number"], "check_code": row["check_code"]},
        )
    ).json()
    assert verified["valid"] is True and "王" not in str(verified)

    # The audit replays CLEAN and counts the erased receipt; a rebuild is identical.
    base = ["--bootstrap", stack.bootstrap, "--topic-prefix", stack.topics.prefix]
    base += ["--progress-every", "0", "--public-key", stack.signer.public_key_b64]
    await stack.until(stack.payment_pool, "SELECT count(*) FROM outbox WHERE sent_at IS NULL", 0)
    code, report = await audit(capsys, "replay", *base, "--ledger-dsn", stack.ledger_dsn, "--json")
    assert code == 0, report["discrepancies"]
    assert report["personal"] == {"sealed_receipts": 1, "erased_receipts": 1, "erasures": 1}
    async with stack.ledger_pool.acquire() as conn:
        projections = await dump_projections(conn)
        await conn.execute("TRUNCATE balances, receipts, statement_lines")
    code, out = await audit(capsys, "rebuild", *base[:6], "--ledger-dsn", stack.ledger_dsn, "--yes")
    assert code == 0, out
    async with stack.ledger_pool.acquire() as conn:
        assert await dump_projections(conn) == projections


async def test_erased_payers_pay_again_and_a_person_gets_a_new_key(stack: Stack) -> None:
    payer, child = f"u-{uuid.uuid4().hex[:10]}", new_id_number()
    caller = {"Authorization": f"Bearer {CALLER_KEY}"}

    async def pay() -> str:
        data = premium(payer, child)
        data["beneficiary"]["relation"] = "child"
        data["purpose"]["scheme"] = "commercial_health"  # no schedule, no slot: pay again
        r = await stack.payment.post(
            "/v1/payments", json=data, headers={**caller, "Idempotency-Key": uuid.uuid4().hex}
        )
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    first = await pay()
    # The payer alone (no ID number of its own): its record is scrubbed and its own key
    # destroyed (the person ``payer:<id>`` whose key sealed its phone on the events).
    r = await stack.payment.post("/v1/erasures", json={"payer_id": payer}, headers=operator())
    assert r.status_code == 200, r.text
    assert (len(r.json()["key_ids"]), r.json()["payer_ids"], r.json()["payments"]) == (
        1,
        [payer],
        0,
    )
    assert (
        await stack.payment_pool.fetchval(
            "SELECT person_hash FROM person_keys WHERE key_id = $1", r.json()["key_ids"][0]
        )
        == f"payer:{payer}"
    )
    phone = "SELECT phone_masked FROM payers WHERE payer_id = $1"
    assert await stack.payment_pool.fetchval(phone, payer) == ""

    # Paying again enrols the request's phone again (no 500 on the erased record).
    second = await pay()
    assert await stack.payment_pool.fetchval(phone, payer) == "139****5678"

    # The child: both payments scrubbed, one key destroyed; the next payment, a new key.
    r = await stack.payment.post("/v1/erasures", json={"id_number": child}, headers=operator())
    assert r.status_code == 200, r.text
    assert len(r.json()["key_ids"]) == 1 and r.json()["payments"] == 2
    shown = await stack.payment.get(f"/v1/payments/{first}", headers=caller)
    assert shown.json()["beneficiary"]["name"] == ERASED
    shown = await stack.payment.get(f"/v1/payments/{second}", headers=caller)
    assert shown.json()["beneficiary"]["name"] == ERASED
    await pay()
    keys = await stack.payment_pool.fetch(
        "SELECT key_id, erased_at IS NULL AS live FROM person_keys WHERE person_hash <> $1"
        " ORDER BY created_at",
        f"payer:{payer}",
    )
    assert [k["live"] for k in keys] == [False, True]
    assert keys[1]["key_id"] not in r.json()["key_ids"]
