"""The resident's side of the ledger (issues 11 and 12) on a real PostgreSQL (and, for
the owner events, real Kafka): a payer's accounts, records, overview and certificate
are read by the caller that enrolled it (and operators) only; another caller gets the
404 of a payer nobody enrolled."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.receipts.service import register_signer
from services.ledger.signing import ReceiptSigner
from shared.db import create_pool, migrate
from shared.events import Envelope, Event, PayerEnrolled, decode_payload, new_event
from shared.http import CallerKeys
from tests.integration.test_ledger_flow import (
    MIGRATIONS,
    Ledger,
    authorized,
    dump_projections,
    journal_events,
    ledger,  # noqa: F401 - the fixture, for the test on real Kafka
)
from tests.support import Infra

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "test-resident-caller-a", "test-resident-caller-b"
OPERATOR_KEY = "test-resident-operator"
BUREAU_KEY = "test-resident-bureau-110000"
KEYS = CallerKeys([KEY_A, KEY_B], operator_keys=[OPERATOR_KEY])
CALLER_A, CALLER_B = (KEYS.caller_of(f"Bearer {k}") for k in (KEY_A, KEY_B))
A, B = ({"Authorization": f"Bearer {k}"} for k in (KEY_A, KEY_B))
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}
BUREAU = {"Authorization": f"Bearer {BUREAU_KEY}"}


def settings() -> LedgerSettings:
    return LedgerSettings(
        YIBAO_API_KEYS=f"{KEY_A},{KEY_B}",
        YIBAO_OPERATOR_API_KEYS=OPERATOR_KEY,
        YIBAO_BUREAU_API_KEYS=f"110000:{BUREAU_KEY}",
        verify_rate_per_minute=1000,
    )


def enrolled(payer: str, caller: str, id_hash: str | None = None) -> Envelope:
    return new_event(
        PayerEnrolled(
            payer_id=payer, caller_id=caller, id_number_hash=id_hash, enrolled_at=datetime.now(UTC)
        ),
        producer="payment",
        key=payer,
        correlation_id=None,
    )


@dataclass
class Resident:
    pool: asyncpg.Pool
    handlers: PostingSetup
    http: httpx.AsyncClient
    settings: LedgerSettings

    async def post(self, env: Envelope) -> None:
        """Hand one event to the ledger's handler, as the consumer does."""
        event = Event(env, decode_payload(env))
        async with self.pool.acquire() as conn, conn.transaction():
            await build_handlers(self.handlers)[event.event_type](conn, event)

    async def get(self, url: str, headers: dict[str, str], **params: Any) -> httpx.Response:
        return await self.http.get(url, headers=headers, params=params)


@pytest.fixture
async def resident(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[Resident]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    handlers = PostingSetup(
        ledger_topic="t.ledger.v1",
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    await register_signer(pool, signer)
    conf = settings()
    app = create_app(conf, pool, signer=signer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ledger"
    ) as http:
        try:
            yield Resident(pool, handlers, http, conf)
        finally:
            await pool.close()


def assert_not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "not_found"


async def test_a_payers_accounts_are_read_by_its_caller_only(resident: Resident) -> None:
    mine, nobodys = f"u-{uuid.uuid4().hex[:8]}", f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(mine, CALLER_A))
    await resident.post(enrolled(mine, CALLER_A))  # redelivered: changes nothing
    await resident.post(enrolled(mine, CALLER_B))  # another caller cannot take it over
    await resident.post(
        authorized(mine, 50_000, method="bank_card", purpose="wallet_topup", caller_id=CALLER_A)
    )
    for account in (f"wallet:{mine}", f"medical:{mine}"):
        r = await resident.get(f"/v1/accounts/{account}", A)
        assert r.status_code == 200, r.text
        assert (await resident.get(f"/v1/accounts/{account}/statement", A)).status_code == 200
        # Caller B, a bureau key, and anyone asking for a payer nobody enrolled: one 404.
        other = await resident.get(f"/v1/accounts/{account}", B)
        assert_not_found(other)
        assert_not_found(await resident.get(f"/v1/accounts/{account}/statement", B))
        assert_not_found(await resident.get(f"/v1/accounts/{account}", BUREAU))
        unknown = await resident.get(f"/v1/accounts/{account.split(':')[0]}:{nobodys}", A)
        assert_not_found(unknown)
        # No oracle: the message differs only by the account id asked for.
        assert other.json()["error"]["message"].replace(mine, "X") == unknown.json()["error"][
            "message"
        ].replace(nobodys, "X")
        assert (await resident.get(f"/v1/accounts/{account}", OPERATOR)).status_code == 200
    assert (await resident.get(f"/v1/accounts/wallet:{mine}", A)).json()["balance"] == 50_000
    assert (await resident.get(f"/v1/accounts/wallet:{mine}", OPERATOR)).json()["balance"] == 50_000
    row = await resident.pool.fetchrow("SELECT * FROM payer_owners WHERE payer_id = $1", mine)
    assert row is not None and row["caller_id"] == CALLER_A

    # Institutional accounts: every caller key; a bureau key its own region only.
    for headers in (A, B, OPERATOR, BUREAU):
        r = await resident.get("/v1/accounts/bureau:110000:premium", headers)
        assert r.status_code == 200, r.text
    assert (await resident.get("/v1/accounts/cash:110000:platform", B)).status_code == 200
    assert_not_found(await resident.get("/v1/accounts/bureau:310000:premium", BUREAU))


async def test_an_older_payer_is_owned_through_its_payments_caller(resident: Resident) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    paid = authorized(payer, 38_000, method="bank_card", purpose="premium", caller_id=CALLER_B)
    await resident.post(paid)
    assert (await resident.get(f"/v1/accounts/wallet:{payer}", B)).status_code == 200
    assert_not_found(await resident.get(f"/v1/accounts/wallet:{payer}", A))
    # The payer insures themself: its keyed ID hash is learnt for the insured look-up.
    row = await resident.pool.fetchrow("SELECT * FROM payer_owners WHERE payer_id = $1", payer)
    assert row["id_number_hash"] == "ab" * 32
    # A payment from before issue 11 (no caller) names no owner: nobody but operators.
    old = f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(authorized(old, 100, method="bank_card", purpose="premium", caller_id=None))
    assert_not_found(await resident.get(f"/v1/accounts/wallet:{old}", A))
    assert (await resident.get(f"/v1/accounts/wallet:{old}", OPERATOR)).status_code == 200


async def test_payer_enrolled_reaches_the_ledger_over_kafka(
    ledger: Ledger,  # noqa: F811 - the fixture imported above
) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    await ledger.publish(enrolled(payer, CALLER_A, "cd" * 32))
    await ledger.until(
        "SELECT caller_id FROM payer_owners WHERE payer_id = $1", payer, want=CALLER_A
    )
    hashed = await ledger.pool.fetchval(
        "SELECT id_number_hash FROM payer_owners WHERE payer_id = $1", payer
    )
    assert hashed == "cd" * 32
    assert await ledger.pool.fetchval("SELECT count(*) FROM journal") == 0


async def test_projections_still_rebuild_byte_identically(resident: Resident) -> None:
    payer = f"u-{uuid.uuid4().hex[:8]}"
    await resident.post(enrolled(payer, CALLER_A, "ab" * 32))
    for amount, purpose in ((38_000, "premium"), (10_000, "wallet_topup")):
        await resident.post(
            authorized(payer, amount, method="bank_card", purpose=purpose, caller_id=CALLER_A)
        )
    async with resident.pool.acquire() as conn:
        before = await dump_projections(conn)
        await store.rebuild_projections(conn, await journal_events(conn))
        assert await dump_projections(conn) == before
