"""Benchmark: the SQL statements (database round trips) the payment service makes for
one bank-card premium, step by step.

Counts every statement asyncpg sends (``Connection.add_query_logger``: BEGIN and
COMMIT included, the prepare of a statement not yet cached excluded after a warm-up)
for: ``POST /v1/payments`` (a new payer, as the load benchmark sends), the consumer's
handler for ``RiskApproved`` (the ``bank_calls`` row), the ``BankWorker`` recording the
bank's yes (``PaymentAuthorized``; the bank is an in-process stand-in answering
``succeeded``), and the handler for ``JournalEntryPosted`` (``PaymentSucceeded``). The
handlers' BEGIN and COMMIT stand for the consumer's batch transaction (shared by every
event of a batch, with its inbox rows, which are not counted); the overload guard's
count (``services.payment.overload``: once per 50 ms, not per payment) is left out.

With ``--payments N`` it then runs N more premiums the same way, one after another,
and prints the CPU they cost: this process (the API, the handlers, the bank worker;
no Kafka, no HTTP server) and its PostgreSQL backends, in ms per payment. Compare runs
made back to back: other load on the machine moves the figures.

    .venv/bin/python -m bench.payment_statements            # needs PostgreSQL (make up)
    .venv/bin/python -m bench.payment_statements --verbose  # and the statements
    .venv/bin/python -m bench.payment_statements --payments 300 2>/dev/null  # logs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from deploy import common
from services.payment import domain
from services.payment.__main__ import MIGRATIONS
from services.payment.api import create_app
from services.payment.bank import BankClient, BankWorker
from services.payment.config import PaymentSettings
from services.payment.handlers import build_handlers
from services.payment.overload import IN_FLIGHT_SQL
from shared import db
from shared.events import (
    Event,
    EventPayload,
    JournalEntryPosted,
    JournalLine,
    ReceiptRef,
    RiskApproved,
    new_event,
)
from shared.logging import configure_logging
from tests.e2e.client import premium_body

REPO = Path(__file__).resolve().parents[1]
API_KEY = "yb_test_" + secrets.token_urlsafe(16)


class Counter:
    """The statements sent while ``counting`` is on."""

    def __init__(self) -> None:
        self.on = False
        self.statements: list[str] = []

    def __call__(self, record: Any) -> None:
        if self.on and record.query != IN_FLIGHT_SQL:  # per 50 ms, not per payment
            self.statements.append(" ".join(str(record.query).split()))

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        self.statements = []
        self.on = True
        try:
            yield self.statements
        finally:
            self.on = False


@asynccontextmanager
async def _bank() -> AsyncIterator[BankClient]:
    """A bank on a local port answering every debit ``succeeded``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.lower().split(b"\r\n")
                        if line.startswith(b"content-length:")
                    ),
                    0,
                )
                reference = json.loads(await reader.readexactly(length) or b"{}").get(
                    "reference", ""
                )
                body = json.dumps({"reference": reference, "status": "succeeded"}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    client = BankClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        yield client
    finally:
        await client.aclose()
        server.close()


async def _feed(pool: asyncpg.Pool, settings: PaymentSettings, payload: EventPayload) -> None:
    envelope = new_event(
        payload,
        producer="ledger" if isinstance(payload, JournalEntryPosted) else "risk",
        key=getattr(payload, "payer_id", "x"),
        correlation_id=getattr(payload, "payment_id", None),
    )
    async with pool.acquire() as conn, conn.transaction():
        await build_handlers(settings)[payload.event_type](conn, Event(envelope, payload))


async def one_payment(
    client: httpx.AsyncClient,
    pool: asyncpg.Pool,
    settings: PaymentSettings,
    worker: BankWorker,
    counter: Counter,
) -> dict[str, list[str]]:
    steps: dict[str, list[str]] = {}
    body = premium_body(f"u-{secrets.token_hex(6)}", 38000)
    headers = {"Authorization": f"Bearer {API_KEY}", "Idempotency-Key": secrets.token_hex(8)}
    with counter.counting() as steps["POST /v1/payments"]:
        response = await client.post("/v1/payments", json=body, headers=headers)
    assert response.status_code == 202, response.text
    payment = response.json()
    approved = RiskApproved(
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        day="2026-11-26",
        cap=5_000_000,
        used=38000,
        remaining=4_962_000,
    )
    with counter.counting() as steps["RiskApproved handler"]:
        await _feed(pool, settings, approved)
    with counter.counting() as steps["BankWorker (lease + record the yes)"]:
        assert await worker.run_once() == 1
    posted = JournalEntryPosted(
        seq=5,
        transaction_id="tx-5",
        payment_id=payment["id"],
        payer_id=payment["payer_id"],
        kind="premium",
        lines=(
            JournalLine(account_id="bank:funding", amount=-38000),
            JournalLine(account_id="bureau:110000:premium", amount=38000),
        ),
        posted_at=payment["created_at"],
        receipt=ReceiptRef(code="11060126", number="0000000005", check_code="abc123"),
        prev_hash="0" * 64,
        hash="1" * 64,
        bank_reference=payment["id"],
    )
    with counter.counting() as steps["JournalEntryPosted handler"]:
        await _feed(pool, settings, posted)
    status = await pool.fetchval("SELECT status FROM payments WHERE id = $1", payment["id"])
    assert status == "succeeded", status
    return steps


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(verbose: bool, payments: int) -> None:
    configure_logging("payment", level="INFO", json=True)  # as the service logs (stderr)
    values = common.read_env_file(REPO / ".run" / "stack.env")
    admin = os.environ.get("DATABASE_URL") or values["DATABASE_URL"]
    name = f"bench_stmts_{secrets.token_hex(4)}"
    dsn = await db.ensure_database(admin, name)
    try:
        await db.migrate(dsn, MIGRATIONS)
        counter = Counter()
        backends: set[int] = set()

        async def init(conn: asyncpg.Connection) -> None:
            await db._init_connection(conn)
            conn.add_query_logger(counter)
            backends.add(conn.get_server_pid())

        pool = await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=4,
            init=init,
            reset=db._keep_session,
        )
        assert pool is not None
        settings = PaymentSettings(
            environment="development",
            dsn=dsn,
            api_keys=API_KEY,
            kafka_bootstrap=values.get("KAFKA_BOOTSTRAP", "127.0.0.1:9"),
        )
        async with _bank() as bank:  # its answers run in this process: counted in ours
            policy = domain.BankPolicy(
                deadline=timedelta(seconds=30),
                retry_base=timedelta(seconds=1),
                retry_max=timedelta(seconds=5),
            )
            worker = BankWorker(pool, bank, topics=settings.topics, policy=policy)
            app = create_app(settings, pool)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://payment") as client:
                for _ in range(3):  # warm-up: every statement prepared once
                    await one_payment(client, pool, settings, worker, counter)
                steps = await one_payment(client, pool, settings, worker, counter)
                if payments:
                    ours, server = time.process_time(), sum(map(_cpu_seconds, backends))
                    for _ in range(payments):
                        await one_payment(client, pool, settings, worker, counter)
                    ours = time.process_time() - ours
                    server = sum(map(_cpu_seconds, backends)) - server
        await pool.close()
    finally:
        await db.drop_database(admin, name)
    total = 0
    for step, statements in steps.items():
        total += len(statements)
        print(f"{len(statements):3d}  {step}")
        if verbose:
            for s in statements:
                print(f"       {s[:150]}")
    print(f"{total:3d}  total for one bank-card premium (consumer batch overhead not counted)")
    if payments:
        print(
            f"CPU per payment over {payments}: this process {1000 * ours / payments:.2f} ms,"
            f" its PostgreSQL backends {1000 * server / payments:.2f} ms"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print the statements")
    parser.add_argument("--payments", type=int, default=0, help="then time N payments")
    args = parser.parse_args()
    asyncio.run(main(args.verbose, args.payments))
