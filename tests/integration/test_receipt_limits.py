"""The public receipt rate limit (issue 11) holds across ledger instances sharing the
database, and counts the real client behind a trusted proxy only."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest

from services.ledger.api import create_app
from services.ledger.receipts import store
from services.ledger.receipts.store import Bucket
from services.ledger.signing import ReceiptSigner
from shared.db import create_pool, migrate
from tests.integration.test_ledger_flow import MIGRATIONS
from tests.integration.test_receipt_pages import ledger_settings
from tests.support import Infra

pytestmark = pytest.mark.integration

UNKNOWN = "/v1/receipts/11060126/0000000001"  # an unknown receipt: 404 until limited
PEER = "127.0.0.1"  # the address httpx's ASGI transport connects from


def client(app: object, peer: str = PEER) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 40000))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://ledger")


async def statuses(http: httpx.AsyncClient, n: int, forwarded: str | None = None) -> list[int]:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return [(await http.get(UNKNOWN, headers=headers)).status_code for _ in range(n)]


async def test_the_limit_holds_across_instances(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> None:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool_a = await create_pool(dsn, max_size=2)
    pool_b = await create_pool(dsn, max_size=2)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    a = client(create_app(ledger_settings(2), pool_a, signer=signer))
    b = client(create_app(ledger_settings(2), pool_b, signer=signer))
    try:
        assert await statuses(a, 1) == [404]
        assert await statuses(b, 1) == [404]
        # The client's two tokens are spent, whichever instance it reaches next.
        limited = await b.get(UNKNOWN)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert limited.json()["error"]["retry_after"] >= 1
        assert (await a.get(UNKNOWN)).status_code == 429
        page = await a.post(
            "/receipts/verify", data={"code": "11060126", "number": "1", "check_code": "A"}
        )
        assert page.status_code == 429  # the 查验 page shares the bucket
        # Another client has its own bucket.
        other = client(create_app(ledger_settings(2), pool_a, signer=signer), peer="10.9.8.7")
        async with other:
            assert await statuses(other, 1) == [404]
    finally:
        for http in (a, b):
            await http.aclose()
        await pool_a.close()
        await pool_b.close()


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    infra: Infra, new_database: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=2)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    monkeypatch.delenv("LEDGER_TRUSTED_PROXIES", raising=False)
    direct = client(create_app(ledger_settings(1), pool, signer=signer))
    try:
        # No trusted proxy (the default): a client cannot pick a fresh bucket by
        # sending X-Forwarded-For.
        assert await statuses(direct, 1, "203.0.113.1") == [404]
        assert await statuses(direct, 1, "203.0.113.2") == [429]
    finally:
        await direct.aclose()

    monkeypatch.setenv("LEDGER_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.10")
    proxied = client(create_app(ledger_settings(1), pool, signer=signer), peer="10.1.2.3")
    try:
        # Behind the trusted proxy, each client behind it has its own bucket...
        assert await statuses(proxied, 1, "198.51.100.1") == [404]
        assert await statuses(proxied, 1, "198.51.100.2") == [404]
        assert await statuses(proxied, 1, "198.51.100.1") == [429]
        # ...read from the right, past trusted hops; a forged left part changes nothing.
        assert await statuses(proxied, 1, "6.6.6.6, 198.51.100.2, 192.0.2.10") == [429]
        assert await statuses(proxied, 1, "198.51.100.3, 10.0.0.7") == [404]
        # The proxy's own requests (no header) count against the proxy.
        assert await statuses(proxied, 1) == [404]
        assert await statuses(proxied, 1) == [429]
    finally:
        await proxied.aclose()
        await pool.close()


async def test_refilled_buckets_are_forgotten(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> None:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=2)
    try:
        bucket = Bucket(capacity=30.0, per_second=0.5)  # full again 60 s after the last take
        await pool.execute(
            "INSERT INTO receipt_rate_buckets (client, tokens, updated_at) VALUES"
            " ('198.51.100.1', 0, now() - interval '61 seconds'),"
            " ('198.51.100.2', 0, now() - interval '5 seconds')"
        )
        await store.forget_full_buckets(pool, bucket)
        left = await pool.fetch("SELECT client FROM receipt_rate_buckets")
        assert [r["client"] for r in left] == ["198.51.100.2"]
        await store.take_token(pool, "198.51.100.3", bucket)
        assert await pool.fetchval(
            "SELECT tokens FROM receipt_rate_buckets WHERE client = '198.51.100.3'"
        ) == pytest.approx(29.0)
    finally:
        await pool.close()
