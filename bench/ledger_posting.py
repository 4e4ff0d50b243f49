"""Benchmark: the ledger's posting cost per payment, one by one against in runs.

Feeds the same bank-card premiums (distinct payers, every one into the one hot bureau
account, the load ``bench.payments`` sends) through ``InboxConsumer``'s apply path in
fetched batches of ``--batch`` messages, into two fresh databases: once with the
ledger's single handlers (each event: head lock, reads, journal, balances, receipt,
head, outbox) and once with its run handler (``LedgerHandlers.post_run``). Prints, per
mode, the CPU of this process (the ledger's work: decisions, hashing, signing, the
driver) and of its PostgreSQL backend (read from /proc: the server must be local), and
the wall time, per payment. No broker: decoding and Kafka are the same in both modes.

    PYTHONPATH=$PWD .venv/bin/python -m bench.ledger_posting --payments 3000 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from bench.procstat import cpu_seconds
from deploy import stack
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner
from shared.consumer import Batched, Handler, InboxConsumer
from shared.db import create_pool, drop_database, ensure_database, migrate
from shared.events import (
    BankConfirmation,
    BeneficiaryRef,
    Event,
    PaymentAuthorized,
    PaymentDetails,
    Purpose,
    decode_envelope,
    decode_payload,
    encode,
    new_event,
)

MIGRATIONS = Path(__file__).resolve().parents[1] / "services" / "ledger" / "migrations"
TOPIC = "bench.payments.v1"


def premium(i: int) -> Any:
    payer = f"u-{uuid.uuid4().hex[:10]}"
    pid = f"pay_{uuid.uuid4().hex[:16]}"
    now = datetime.now(UTC)
    details = PaymentDetails(
        payment_id=pid,
        payer_id=payer,
        payer_phone_masked="",
        payer_phone_sealed="v1.sealed-for-bench",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash=f"{i:064x}",
            name="张三",
            relation="self",
        ),
        purpose=Purpose(
            type="premium", region="110000", scheme="urban_rural_resident", period="2027"
        ),
        amount=38_000,
        method="bank_card",
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=now,
        caller_id="bench-caller",
    )
    bank = BankConfirmation(reference=f"bk_{pid}", confirmed_at=now)
    return new_event(
        PaymentAuthorized(payment=details, stepped_up=False, bank_debit=bank),
        producer="payment",
        key=payer,
        correlation_id=pid,
    )


def batches(count: int, size: int) -> list[list[tuple[Any, Event]]]:
    out: list[list[tuple[Any, Event]]] = []
    for i in range(count):
        value = encode(premium(i))
        env = decode_envelope(value)
        record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
            TOPIC, 0, i, 0, 0, env.key.encode(), value, None, 0, len(value), []
        )
        if i % size == 0:
            out.append([])
        out[-1].append((record, Event(env, decode_payload(env))))
    return out


async def measure(admin: str, mode: str, work: list[list[tuple[Any, Event]]]) -> None:
    dsn = await ensure_database(admin, f"bench_ledger_{uuid.uuid4().hex[:8]}_{mode}")
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    signer = ReceiptSigner(b"bench-ledger-posting-signing-k32")
    setup = PostingSetup(
        ledger_topic="bench.ledger.v1",
        keys=PostingKeys(check_key=b"h" * 32, signer=signer, journal_signer=signer),
        policy=ReceiptPolicy(),
    )
    handlers: dict[str, Handler] = dict(build_handlers(setup))
    if mode == "one":  # the single handlers only: every run is one event
        handlers = {t: (h.one if isinstance(h, Batched) else h) for t, h in handlers.items()}
    consumer = InboxConsumer(
        name="ledger", bootstrap="unused:9092", topics=[TOPIC], pool=pool, handlers=handlers
    )
    backend = await pool.fetchval("SELECT pg_backend_pid()")
    payments = sum(len(b) for b in work)
    try:
        pg0, me0, wall0 = cpu_seconds(backend), time.process_time(), time.perf_counter()
        for batch in work:
            await consumer._apply({TopicPartition(TOPIC, 0): batch}, None)
        pg1, me1, wall1 = cpu_seconds(backend), time.process_time(), time.perf_counter()
        posted = await pool.fetchval("SELECT count(*) FROM journal")
        assert posted == payments, (posted, payments)
        assert consumer.stats.careful_batches == 0
    finally:
        await pool.close()
        await drop_database(admin, dsn.rsplit("/", 1)[1])
    pg = (pg1 - pg0) if pg0 is not None and pg1 is not None else float("nan")
    print(
        f"{mode:>4}: {payments} payments in batches of {len(work[0])}: ledger process"
        f" {(me1 - me0) / payments * 1000:.2f} ms CPU, its PostgreSQL backend"
        f" {pg / payments * 1000:.2f} ms CPU, wall {(wall1 - wall0) / payments * 1000:.2f} ms"
        " per payment"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100, help="messages per fetched batch")
    parser.add_argument("--rounds", type=int, default=2, help="one/run pairs, alternated")
    args = parser.parse_args()
    admin = os.environ.get("DATABASE_URL") or stack.ensure_infra().database_url
    for _ in range(args.rounds):
        for mode in ("one", "run"):
            await measure(admin, mode, batches(args.payments, args.batch))


if __name__ == "__main__":
    asyncio.run(main())
