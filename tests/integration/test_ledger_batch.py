"""A run of payments.v1 events booked at once (``LedgerHandlers.post_run``, issue 13)
leaves exactly what booking them one by one leaves, byte for byte: journal rows and
their hashes and signatures, rejections, receipts, balances, statement lines, the head,
owners and the outbox's ledger.v1 values; and both rebuild from the event log.

Each side is a fresh PostgreSQL database fed through ``InboxConsumer``'s apply path
(no broker): side "run" gets the whole batch at once (runs through ``post_run``),
side "one" gets each message as its own batch (``Batched.one``, the single path).
Both read the same deterministic clock and sign with the same keys."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from services.ledger import store
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner
from shared.consumer import Batched, InboxConsumer
from shared.db import create_pool, migrate
from shared.events import (
    Envelope,
    Event,
    MedicalAccountAllocated,
    PaymentAuthorized,
    RefundAuthorized,
    decode_envelope,
    decode_payload,
    encode,
)
from tests.integration.test_ledger_flow import (
    CALLER_ID,
    MIGRATIONS,
    authorized,
    dump_projections,
)
from tests.integration.test_ledger_refunds import allocation, refund
from tests.support import Infra

pytestmark = pytest.mark.integration

TOPIC = "t.payments.v1"
LEDGER_TOPIC = "t.ledger.v1"
SIGNER = ReceiptSigner(b"batch-equivalence-signing-key-32")
JOURNAL_SIGNER = ReceiptSigner(b"batch-equivalence-journal-key-32")
START = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)


def ticking_clock() -> Callable[[], datetime]:
    """A clock that moves 7 ms per reading: both sides read it once per decision."""
    ticks = itertools.count()
    return lambda: START + timedelta(milliseconds=7 * next(ticks))


class FakeProducer:
    """Takes dead letters (the only thing ``_apply`` sends) and keeps them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, *, value: bytes, key: bytes | None) -> None:
        self.sent.append((topic, value))


@dataclass
class Side:
    """One database fed through an InboxConsumer's apply path."""

    pool: asyncpg.Pool
    consumer: InboxConsumer
    runs: list[int] = field(default_factory=list)  # the length of each post_run call
    producer: FakeProducer = field(default_factory=FakeProducer)
    offset: int = 0

    def records(self, envelopes: list[Envelope]) -> list[tuple[Any, Event]]:
        out = []
        for env in envelopes:
            value = encode(env)
            record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
                TOPIC, 0, self.offset, 0, 0, env.key.encode(), value, None, 0, len(value), []
            )
            self.offset += 1
            decoded = decode_envelope(value)
            out.append((record, Event(decoded, decode_payload(decoded))))
        return out

    async def apply(self, envelopes: list[Envelope]) -> None:
        """``envelopes`` as one fetched batch."""
        batch = {TopicPartition(TOPIC, 0): self.records(envelopes)}
        await self.consumer._apply(batch, self.producer)

    async def apply_one_by_one(self, envelopes: list[Envelope]) -> None:
        for env in envelopes:
            await self.apply([env])


async def new_side(make_db: Callable[..., Awaitable[str]]) -> Side:
    dsn = await make_db()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=2)
    setup = PostingSetup(
        ledger_topic=LEDGER_TOPIC,
        keys=PostingKeys(check_key=b"h" * 32, signer=SIGNER, journal_signer=JOURNAL_SIGNER),
        policy=ReceiptPolicy(),
        clock=ticking_clock(),
    )
    handlers = build_handlers(setup)
    runs: list[int] = []
    paid = handlers[PaymentAuthorized.event_type]
    assert isinstance(paid, Batched)
    many = paid.many

    async def counted(conn: asyncpg.Connection, events: list[Event]) -> None:
        runs.append(len(events))
        await many(conn, events)

    booked = (PaymentAuthorized, MedicalAccountAllocated, RefundAuthorized)
    for event_type in (t.event_type for t in booked):
        handler = handlers[event_type]
        assert isinstance(handler, Batched)
        handlers[event_type] = Batched(handler.one, counted)
    consumer = InboxConsumer(
        name="ledger",
        bootstrap="unused:9092",
        topics=[TOPIC],
        pool=pool,
        handlers=handlers,
        max_attempts=2,
        retry_backoff=0,
    )
    return Side(pool, consumer, runs)


@pytest.fixture
async def sides(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[tuple[Side, Side]]:
    run, one = await new_side(new_database), await new_side(new_database)
    try:
        yield run, one
    finally:
        await run.pool.close()
        await one.pool.close()


async def dump(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """Every table the ledger's handlers write, as text rows in key order."""
    async with pool.acquire() as conn:
        out = await dump_projections(conn)
        queries = {
            "journal": "SELECT seq::text, payment_id, transaction_id::text, event_id::text,"
            " entry::text, hash, prev_hash, posted_at::text, receipt_event_id::text,"
            " receipt_event::text, refund_id, kind, clearing_day::text,"
            " bank_confirmed_at::text FROM journal ORDER BY journal.seq",
            "rejections": "SELECT payment_id, event_id::text, causation_id::text, account_id,"
            " balance::text, amount::text, decline_code, rejected_at::text, refund_id"
            " FROM rejections ORDER BY payment_id, refund_id",
            "outbox": "SELECT id::text, topic, key, event_id::text, event_type, value"
            " FROM outbox ORDER BY outbox.id",
            "payer_owners": "SELECT payer_id, caller_id, id_number_hash, enrolled_at::text"
            " FROM payer_owners ORDER BY payer_id",
            "inbox": "SELECT consumer, event_id::text, kafka_offset::text FROM inbox"
            " ORDER BY inbox.kafka_offset",
        }
        for name, query in queries.items():
            out[name] = [tuple(r) for r in await conn.fetch(query)]
    return out


def scenario() -> tuple[list[Envelope], list[Envelope], list[str]]:
    """(before, batch): what both databases hold first, then the batch under test: two
    regions' hot bureau accounts, wallets topped up and spent within the batch,
    insufficient funds decided on the running balance, medical accounts credited and
    spent, a payment decided before (re-sent under a new event id), a payment decided
    earlier in the batch (the same), a duplicate message, refunds (partial, to the last
    fen, too much, decided earlier in the batch, of a spent top-up, refused then
    booked once a refund filled the wallet), a
    payer without an owner, a payer whose ID hash arrives with a later payment, payers
    named by a caller that does not own them (within a run and across runs)."""
    a, b, c, d, e, f = (f"u-{uuid.uuid4().hex[:8]}" for _ in range(6))
    early = authorized(a, 50_000, method="bank_card", purpose="wallet_topup")
    a_premium = authorized(a, 10_000, method="wallet", purpose="premium")
    b_before = authorized(b, 38_000, method="bank_card", purpose="premium")
    before = [
        early,
        a_premium,
        b_before,
        authorized(f, 38_000, method="bank_card", purpose="premium", caller_id="caller-x"),
    ]
    first_refund = refund(b_before, 8_000)
    for_parent = authorized(e, 20_000, method="bank_card", purpose="premium")
    for_parent.payload["payment"]["beneficiary"]["relation"] = "parent"  # no payer hash
    b_premium = authorized(b, 38_000, method="bank_card", purpose="premium", region="310000")
    c_topup = authorized(c, 20_000, method="bank_card", purpose="wallet_topup", caller_id=None)
    c_first = authorized(c, 15_000, method="wallet", purpose="premium", caller_id=None)
    d_alloc = allocation(d, 30_000)
    resent = authorized(
        a,
        50_000,
        method="bank_card",
        purpose="wallet_topup",
        payment_id=early.payload["payment"]["payment_id"],
    )
    again = authorized(
        b,
        38_000,
        method="bank_card",
        purpose="premium",
        region="310000",
        payment_id=b_premium.payload["payment"]["payment_id"],
    )
    batch = [
        b_premium,
        authorized(a, 39_000, method="wallet", purpose="premium"),  # 40,000 left: ok
        authorized(a, 2_000, method="wallet", purpose="premium"),  # 1,000 left: refused
        c_topup,
        c_first,  # 5,000 left
        authorized(c, 6_000, method="wallet", purpose="premium", caller_id=None),  # refused
        authorized(c, 5_000, method="wallet", purpose="premium", caller_id=None),  # exactly
        d_alloc,
        authorized(d, 30_001, method="medical_account", purpose="premium"),  # refused
        authorized(d, 12_000, method="medical_account", purpose="premium"),
        resent,  # decided before the batch
        b_premium,  # the same message again: the inbox drops it
        again,  # decided earlier in this batch, under a new event id
        authorized(b, 1_000, method="bank_card", purpose="premium"),
        # b named by two callers in one run: its owners are recorded event by event
        authorized(b, 2_000, method="bank_card", purpose="premium", caller_id="caller-y"),
        first_refund,
        authorized(d, 18_000, method="medical_account", purpose="premium"),  # exactly
        allocation(d, 1_000),
        for_parent,  # e's owner without an ID hash ...
        authorized(e, 20_000, method="bank_card", purpose="premium"),  # ... then with it
        authorized(f, 2_000, method="bank_card", purpose="premium", caller_id="caller-y"),
        *(
            authorized(
                f"u-{uuid.uuid4().hex[:8]}", 30_000 + i, method="bank_card", purpose="premium"
            )
            for i in range(12)
        ),
        refund(b_before, 30_000),  # with the first: all of it
        refund(b_before, 1),  # refused: more than is left
        refund(b_before, 8_000, refund_id=first_refund.payload["refund_id"]),  # decided
        refund(early, 5_000),  # refused: the wallet's top-up was spent (1,000 left)
        refund(a_premium, 10_000),  # back into the wallet: 11,000
        refund(early, 5_000),  # now the wallet holds it
    ]
    return before, batch, [a, b, c, d, e, f]


async def test_a_run_books_exactly_what_one_by_one_does(sides: tuple[Side, Side]) -> None:
    run, one = sides
    before, batch, (_, b, c, _, e, f) = scenario()
    for side in sides:
        await side.apply_one_by_one(before)
    assert await dump(run.pool) == await dump(one.pool)
    run.runs.clear()

    await run.apply(batch)
    await one.apply_one_by_one(batch)

    assert run.consumer.stats.careful_batches == 0
    assert run.runs == [len(batch) - 1]  # one run; the duplicate is gone
    assert one.runs == []
    got, want = await dump(run.pool), await dump(one.pool)
    for table in want:
        assert got[table] == want[table], table
    journal = want["journal"]
    assert len(journal) == 4 + 30  # before; the batch's postings (5 refused, 4 decided)
    kinds = [r[11] for r in journal]
    assert kinds.count("refund") == 4 and kinds.count("allocation") == 2
    assert [r[6] for r in journal[1:]] == [r[5] for r in journal[:-1]]  # chained
    assert len(want["rejections"]) == 5
    owners = {r[0]: r[1:3] for r in want["payer_owners"]}
    assert owners[e] == (CALLER_ID, "ab" * 32)  # the hash came with the second payment
    assert owners[b][0] == CALLER_ID and owners[f][0] == "caller-x"  # the first owner stays
    assert c not in owners

    # Both rebuild from the event log (the outbox's ledger.v1 values) to the same tables.
    for side in sides:
        async with side.pool.acquire() as conn:
            rows = await conn.fetch("SELECT value FROM outbox ORDER BY outbox.id")
            events = []
            for r in rows:
                env = decode_envelope(bytes(r["value"]))
                events.append(Event(env, decode_payload(env)))
            projections = await dump_projections(conn)
            await store.rebuild_projections(conn, events)
            assert await dump_projections(conn) == projections


async def test_a_poison_event_in_a_run_is_dead_lettered_alone(sides: tuple[Side, Side]) -> None:
    run, one = sides
    payer = f"u-{uuid.uuid4().hex[:8]}"
    poison = authorized(payer, 1_000, method="bank_card", purpose="premium")
    poison.payload["bank_debit"] = None  # no bank confirmation: InvalidPosting
    batch = [
        authorized(payer, 9_000, method="bank_card", purpose="wallet_topup"),
        poison,
        authorized(payer, 9_000, method="wallet", purpose="premium"),
    ]
    await run.apply(batch)
    await one.apply_one_by_one(batch)
    assert run.consumer.stats.careful_batches == 1
    assert len(run.producer.sent) == len(one.producer.sent) == 1
    assert run.consumer.stats.dead_lettered == one.consumer.stats.dead_lettered == 1
    assert poison.payload["payment"]["payment_id"].encode() in run.producer.sent[0][1]
    # The careful path read the clock again after the failed run: compare all but times.
    got, want = await dump(run.pool), await dump(one.pool)
    assert got["balances"] == want["balances"]
    assert [r[1] for r in got["journal"]] == [r[1] for r in want["journal"]]
    assert len(want["journal"]) == 2
    assert got["rejections"] == want["rejections"] == []


async def test_a_refund_of_a_payment_in_the_same_run_goes_one_by_one(
    sides: tuple[Side, Side],
) -> None:
    run, one = sides
    payer = f"u-{uuid.uuid4().hex[:8]}"
    paid = authorized(payer, 38_000, method="bank_card", purpose="premium")
    batch = [
        paid,
        refund(paid, 38_000),
        authorized(payer, 1_000, method="bank_card", purpose="premium"),
    ]
    await run.apply(batch)
    await one.apply_one_by_one(batch)
    assert run.consumer.stats.careful_batches == 1  # RunRefused: the single path
    # The careful path read the clock again after the refused run: compare all but times.
    got, want = await dump(run.pool), await dump(one.pool)
    assert got["balances"] == want["balances"]
    assert [r[1:3] for r in got["journal"]] == [r[1:3] for r in want["journal"]]
    assert [r[11] for r in want["journal"]] == ["premium", "refund", "premium"]
