"""In-process wake-ups on the real database (issue 13: no NOTIFY on the hot path): a
write staged through a pool connection wakes this process's poller only once the
connection is back in the pool, its transaction over, never while it is open."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from shared import polling
from shared.db import create_pool
from shared.outbox import WAKE_CHANNEL, write_outbox
from tests.integration.backbone_app import envelope_for, prepare

pytestmark = pytest.mark.integration


async def test_an_outbox_write_wakes_the_relay_after_its_commit_not_before(
    new_database: Callable[[], Awaitable[str]],
) -> None:
    dsn = await new_database()
    await prepare(dsn)
    pool = await create_pool(dsn)
    woken: list[int] = []

    async def unsent() -> int:
        return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))

    def wake() -> None:
        woken.append(1)

    polling.listen(WAKE_CHANNEL, wake)
    try:
        async with pool.acquire() as conn:
            async with conn.transaction():
                await write_outbox(conn, "t.payments.v1", [envelope_for("u-w1", 1)])
                assert woken == []  # the row is not committed yet
            assert woken == []  # still held: delivered on release
        assert woken == [1]
        assert await unsent() == 1  # what the woken relay finds

        # A rolled-back write wakes for nothing (the relay looks and finds no row).
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await write_outbox(conn, "t.payments.v1", [envelope_for("u-w1", 2)])
            await tx.rollback()
        assert woken == [1, 1]
        assert await unsent() == 1
    finally:
        polling.unlisten(WAKE_CHANNEL, wake)
        await pool.close()
