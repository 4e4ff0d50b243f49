"""Ledger HTTP edges and the posting lock, against a real PostgreSQL (no broker needed)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner
from shared.db import create_pool, migrate
from shared.events import Event, PaymentAuthorized
from tests.integration.test_ledger_flow import (
    API_KEY,
    MIGRATIONS,
    authorized,
    dump_projections,
    journal_events,
    ledger_settings,
)
from tests.support import Infra

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    pool: asyncpg.Pool
    handlers: PostingSetup
    http: httpx.AsyncClient

    async def handle(self, envelope_payment: tuple[str, int, str, str]) -> None:
        payer, amount, method, purpose = envelope_payment
        env = authorized(payer, amount, method=method, purpose=purpose)
        event = Event(env, PaymentAuthorized.model_validate(env.payload))
        async with self.pool.acquire() as conn, conn.transaction():
            await build_handlers(self.handlers)[event.event_type](conn, event)


@pytest.fixture
async def setup(infra: Infra, new_database: Callable[..., Awaitable[str]]) -> AsyncIterator[Setup]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=6)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    handlers = PostingSetup(
        ledger_topic="t.ledger.v1",
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    app = create_app(ledger_settings(5), pool, signer=signer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
        try:
            yield Setup(pool, handlers, http)
        finally:
            await pool.close()


async def test_concurrent_postings_serialize_on_the_head(setup: Setup) -> None:
    payers = [f"u-{uuid.uuid4().hex[:6]}" for _ in range(8)]
    await asyncio.gather(
        *(setup.handle((p, 1000 + i, "bank_card", "premium")) for i, p in enumerate(payers))
    )
    rows = await setup.pool.fetch("SELECT seq, hash, prev_hash FROM journal ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(1, 9))
    for before, after in itertools.pairwise(rows):
        assert after["prev_hash"] == before["hash"]
    numbers = await setup.pool.fetch("SELECT number FROM receipts ORDER BY number")
    assert [int(r["number"]) for r in numbers] == list(range(1, 9))
    # The outbox holds one entry and one receipt per payment, in journal order.
    types = await setup.pool.fetch("SELECT event_type FROM outbox ORDER BY id")
    assert [r["event_type"] for r in types] == ["JournalEntryPosted", "ReceiptIssued"] * 8
    # The database copy of the journal replays to the same tables.
    async with setup.pool.acquire() as conn:
        before_dump = await dump_projections(conn)
        await store.rebuild_projections(conn, await journal_events(conn))
        assert await dump_projections(conn) == before_dump


async def test_journal_is_append_only(setup: Setup) -> None:
    await setup.handle(("u-append", 100, "bank_card", "premium"))
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await setup.pool.execute("UPDATE journal SET posted_at = now()")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await setup.pool.execute("DELETE FROM journal")


async def test_account_errors(setup: Setup) -> None:
    http = setup.http
    r = await http.get("/v1/accounts/wallet:u-1")
    assert r.status_code == 401
    assert r.json()["error"]["param"] == "Authorization"
    r = await http.get("/v1/accounts/wallet:u-1", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    headers = {"Authorization": f"Bearer {API_KEY}"}
    r = await http.get("/v1/accounts/not-an-account", headers=headers)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    r = await http.get("/v1/accounts/bureau:310000:premium", headers=headers)
    assert r.json() == {"account_id": "bureau:310000:premium", "balance": 0, "currency": "CNY"}


async def test_receipt_errors_and_rate_limit(setup: Setup) -> None:
    http = setup.http
    r = await http.get("/v1/receipts/11060126/0000000001")
    assert r.status_code == 404
    r = await http.post("/v1/receipts/verify", json={"code": "11060126", "number": "1"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] in {"number", "check_code"}
    r = await http.post("/v1/receipts/verify", content=b"{not json")
    assert r.status_code == 400
    # 5 per minute in this app: the 3 calls above, 2 more, then 429.
    for _ in range(2):
        r = await http.get("/v1/receipts/11060126/0000000001")
        assert r.status_code == 404
    r = await http.get("/v1/receipts/11060126/0000000001")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    # Reading the public key and account reads are not rate-limited.
    assert (await http.get("/v1/receipts/public-key")).status_code == 200
    assert (await http.get("/healthz")).status_code == 200
