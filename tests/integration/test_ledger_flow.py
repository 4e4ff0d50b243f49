"""The ledger against real Kafka and PostgreSQL: post, reject, dedup, receipts, rebuild."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain.chain import GENESIS_HASH
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner, verify_face
from shared.consumer import InboxConsumer
from shared.db import create_pool, migrate
from shared.events import (
    BankConfirmation,
    BeneficiaryRef,
    Envelope,
    Event,
    EventPayload,
    JournalEntryPosted,
    PaymentAuthorized,
    PaymentDetails,
    Purpose,
    ReceiptIssued,
    encode,
    new_event,
)
from shared.http import CallerKeys
from shared.outbox import OutboxRelay, make_producer
from shared.topic_reader import read_topic
from shared.topics import TopicNames
from tests.support import Infra

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "services" / "ledger" / "migrations"
WAIT = 30.0
API_KEY = "test-caller-key"
OPERATOR_KEY = "test-operator-key-0f3a9c27b1"
# The pseudonymous id of API_KEY's caller: payment puts it in PaymentDetails.caller_id,
# and the ledger lets only that caller read the payer's accounts (issue 11).
CALLER_ID = CallerKeys([API_KEY]).caller_of(f"Bearer {API_KEY}")


@dataclass
class Ledger:
    pool: asyncpg.Pool
    topics: TopicNames
    bootstrap: str
    signer: ReceiptSigner
    http: httpx.AsyncClient

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

    async def ledger_events(self, count: int) -> list[Event]:
        """The ledger.v1 topic once it holds at least ``count`` events."""
        deadline = asyncio.get_running_loop().time() + WAIT
        while True:
            events = await read_topic(self.bootstrap, self.topics.ledger)
            if len(events) >= count or asyncio.get_running_loop().time() > deadline:
                return events
            await asyncio.sleep(0.3)

    async def until(self, query: str, *args: Any, want: Any) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT
        while (got := await self.pool.fetchval(query, *args)) != want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{query!r}: waited for {want!r}, have {got!r}")
            await asyncio.sleep(0.2)


@pytest.fixture
async def ledger(
    infra: Infra, kafka_topics: TopicNames, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Ledger]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    handlers = PostingSetup(
        ledger_topic=kafka_topics.ledger,
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    consumer = InboxConsumer(
        name=f"{kafka_topics.prefix}ledger",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.payments],
        pool=pool,
        handlers=build_handlers(handlers),
    )
    relay = OutboxRelay(dsn, infra.kafka_bootstrap, poll_interval=0.2)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    app = create_app(ledger_settings(1000), pool, signer=signer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
        try:
            yield Ledger(pool, kafka_topics, infra.kafka_bootstrap, signer, http)
        finally:
            consumer.stop()
            relay.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)
            await pool.close()


def ledger_settings(rate_per_minute: int) -> LedgerSettings:
    """Settings for an app under test: the test caller key, the given public rate."""
    return LedgerSettings(
        YIBAO_API_KEYS=API_KEY,
        YIBAO_OPERATOR_API_KEYS=OPERATOR_KEY,
        verify_rate_per_minute=rate_per_minute,
    )


async def journal_events(conn: asyncpg.Connection) -> list[EventPayload]:
    """The journal's events from the database copy, in order (entry, then its receipt)."""
    out: list[EventPayload] = []
    for r in await conn.fetch("SELECT entry, receipt_event FROM journal ORDER BY seq"):
        out.append(JournalEntryPosted.model_validate(r["entry"]))
        if r["receipt_event"] is not None:
            out.append(ReceiptIssued.model_validate(r["receipt_event"]))
    return out


async def dump_projections(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """The projection tables as text rows in key order (for byte-for-byte comparison)."""
    queries = {
        "balances": "SELECT account_id, balance::text, currency, last_seq::text FROM balances"
        " ORDER BY account_id",
        "receipts": "SELECT code, number, payment_id, journal_seq::text, check_code, face::text,"
        " signature, key_id, issued_at::text FROM receipts ORDER BY code, number",
        "statement_lines": "SELECT account_id, seq::text, payment_id, amount::text,"
        " balance_after::text, posted_at::text FROM statement_lines ORDER BY account_id, seq",
        "ledger_head": "SELECT seq::text, hash, receipt_counters::text FROM ledger_head",
    }
    return {name: [tuple(r) for r in await conn.fetch(q)] for name, q in queries.items()}


def authorized(
    payer: str,
    amount: int,
    *,
    method: str,
    purpose: str,
    region: str = "110000",
    payment_id: str | None = None,
    caller_id: str | None = CALLER_ID,
) -> Envelope:
    pid = payment_id or f"pay_{uuid.uuid4().hex[:16]}"
    premium = purpose == "premium"
    details = PaymentDetails(
        payment_id=pid,
        payer_id=payer,
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed-for-test",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="ab" * 32,
            name="张三",
            relation="self",
        ),
        purpose=Purpose(
            type=purpose,
            region=region,  # type: ignore[arg-type]
            scheme="urban_rural_resident" if premium else None,
            period="2027" if premium else None,
        ),
        amount=amount,
        method=method,  # type: ignore[arg-type]
        payee_id=f"bureau:{region}" if premium else f"wallet:{payer}",
        payee_name="北京市医疗保障局" if premium else "零钱",
        requested_at=datetime.now(UTC),
        caller_id=caller_id,
    )
    bank = (
        BankConfirmation(reference=f"bk_{pid}", confirmed_at=datetime.now(UTC))
        if method == "bank_card"
        else None
    )
    return new_event(
        PaymentAuthorized(payment=details, stepped_up=False, bank_debit=bank),
        producer="payment",
        key=payer,
        correlation_id=pid,
    )


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def operator() -> dict[str, str]:
    """An operator reads a receipt's full, signed face (issue 11: the public gets the
    masked face, and only with the check code)."""
    return {"Authorization": f"Bearer {OPERATOR_KEY}"}


async def test_posting_receipts_rejection_dedup_and_rebuild(ledger: Ledger) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    topup = authorized(payer, 100_000, method="bank_card", purpose="wallet_topup")
    premium = authorized(payer, 38_000, method="wallet", purpose="premium")
    await ledger.publish(topup)
    await ledger.until("SELECT count(*) FROM journal", want=1)
    await ledger.publish(premium)
    await ledger.until("SELECT count(*) FROM journal", want=2)

    # Balances: the wallet holds top-up minus premium; the bureau got the premium.
    async def balance(account_id: str) -> int:
        r = await ledger.http.get(f"/v1/accounts/{account_id}", headers=auth())
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["account_id"] == account_id
        assert body["currency"] == "CNY"
        return int(body["balance"])

    assert await balance(f"wallet:{payer}") == 62_000
    assert await balance("bureau:110000:premium") == 38_000
    assert await balance("bank:funding") == -100_000
    assert await balance("clearing:platform") == 0
    assert await balance(f"medical:{payer}") == 0  # well-formed, never touched

    # The journal: seq 1 and 2, linked hashes.
    rows = await ledger.pool.fetch(
        "SELECT seq, hash, prev_hash, payment_id FROM journal ORDER BY seq"
    )
    assert [r["seq"] for r in rows] == [1, 2]
    assert rows[0]["prev_hash"] == GENESIS_HASH
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert [r["payment_id"] for r in rows] == [topup.correlation_id, premium.correlation_id]

    # The events on ledger.v1: two entries and one receipt, caused by the authorizations.
    events = await ledger.ledger_events(3)
    assert [e.event_type for e in events] == [
        "JournalEntryPosted",
        "JournalEntryPosted",
        "ReceiptIssued",
    ]
    assert [e.envelope.causation_id for e in events] == [
        topup.event_id,
        premium.event_id,
        premium.event_id,
    ]
    assert {e.envelope.key for e in events} == {payer}
    entry = events[1].payload
    issued = events[2].payload
    ref = entry.receipt  # type: ignore[attr-defined]
    assert ref is not None
    assert issued.receipt["check_code"] == ref.check_code  # type: ignore[attr-defined]
    assert issued.payer_phone_sealed == "v1.sealed-for-test"  # type: ignore[attr-defined]

    # The receipt: its full face, signed with the published key.
    r = await ledger.http.get(f"/v1/receipts/{ref.code}/{ref.number}", headers=operator())
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["receipt"]["total"] == 38_000
    assert receipt["receipt"]["total_in_words"] == "叁佰捌拾元整"
    key = (await ledger.http.get("/v1/receipts/public-key")).json()
    assert key["algorithm"] == "Ed25519"
    assert key["key_id"] == receipt["key_id"]
    public_raw = base64.b64decode(key["public_key"])
    assert verify_face(receipt["receipt"], receipt["signature"], public_raw)

    # Verification: valid and counted; a wrong check code looks like an unknown receipt.
    check = {"code": ref.code, "number": ref.number, "check_code": ref.check_code}
    first = (await ledger.http.post("/v1/receipts/verify", json=check)).json()
    assert first["valid"] is True
    assert first["checked_count"] == 1
    assert first["receipt"]["total"] == 38_000
    assert first["receipt"]["payer_name"] == "张*"
    second = (await ledger.http.post("/v1/receipts/verify", json=check)).json()
    assert second["checked_count"] == 2
    wrong_code = "AAAAAA" if ref.check_code != "AAAAAA" else "BBBBBB"
    wrong = await ledger.http.post("/v1/receipts/verify", json={**check, "check_code": wrong_code})
    unknown = await ledger.http.post("/v1/receipts/verify", json={**check, "number": "9999999999"})
    assert wrong.status_code == unknown.status_code == 200
    assert wrong.json() == unknown.json() == {"valid": False, "checked_count": 0, "receipt": None}

    # A wallet premium beyond the balance is rejected, with the figures.
    too_much = authorized(payer, 62_001, method="wallet", purpose="premium")
    await ledger.publish(too_much)
    events = await ledger.ledger_events(4)
    rejected = events[3]
    assert rejected.event_type == "PostingRejected"
    assert rejected.envelope.causation_id == too_much.event_id
    assert rejected.envelope.correlation_id == too_much.correlation_id
    figures = {"account_id", "balance", "amount", "decline_code"}
    assert rejected.payload.model_dump(include=figures) == {
        "account_id": f"wallet:{payer}",
        "balance": 62_000,
        "amount": 62_001,
        "decline_code": "insufficient_funds",
    }
    assert await balance(f"wallet:{payer}") == 62_000

    # Duplicates: the same event again, and a new event for an already decided payment.
    again = authorized(
        payer, 38_000, method="wallet", purpose="premium", payment_id=premium.correlation_id
    )
    again_rejected = authorized(
        payer, 1, method="wallet", purpose="premium", payment_id=too_much.correlation_id
    )
    marker = authorized(payer, 500, method="bank_card", purpose="wallet_topup")
    await ledger.publish(premium, again, again_rejected, marker)
    await ledger.until("SELECT count(*) FROM journal", want=3)  # only the marker posted
    assert await ledger.pool.fetchval("SELECT count(*) FROM rejections") == 1
    assert await ledger.pool.fetchval("SELECT count(*) FROM receipts") == 1
    events = await ledger.ledger_events(5)
    assert [e.event_type for e in events] == [
        "JournalEntryPosted",
        "JournalEntryPosted",
        "ReceiptIssued",
        "PostingRejected",
        "JournalEntryPosted",
    ]
    assert await balance(f"wallet:{payer}") == 62_500

    # Rebuild: drop the projections, replay ledger.v1 from offset 0: byte-identical.
    async with ledger.pool.acquire() as conn:
        before = await dump_projections(conn)
        head = await store.rebuild_projections(conn, events)
        assert head.seq == 3
        assert await dump_projections(conn) == before
        # The same from the database copy of the journal, and with every event twice.
        await store.rebuild_projections(conn, await journal_events(conn))
        assert await dump_projections(conn) == before
        await store.rebuild_projections(conn, [e for e in events for _ in range(2)])
        assert await dump_projections(conn) == before
        # Verification counts survive a rebuild: they are not a projection.
        assert await conn.fetchval("SELECT verify_count FROM receipt_checks") == 2
        # Events that stop short of the journal are refused and roll back.
        with pytest.raises(store.RebuildIncomplete):
            await store.rebuild_projections(conn, events[:3])
        assert await dump_projections(conn) == before
