"""``yibao-audit`` against a running ledger on real Kafka and PostgreSQL.

The ledger consumes PaymentAuthorized from a prefixed payments topic and publishes its
journal through the outbox; the test plays the payment service's part (PaymentSucceeded
/ PaymentFailed). Then: replay from the broker against the live database and API,
really truncate the projection tables and rebuild them through the audit command
(byte-identical), export to a signed file and replay it offline, and catch drift.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import pytest
import uvicorn

from services.ledger.api import create_app
from services.ledger.audit.cli import main
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.receipts.service import register_signers
from services.ledger.signing import LedgerSigners, SigningPurpose
from shared.consumer import InboxConsumer
from shared.crypto import b64e
from shared.db import create_pool, migrate
from shared.events import (
    Envelope,
    JournalEntryPosted,
    PaymentFailed,
    PaymentSucceeded,
    PostingRejected,
    encode,
    new_event,
)
from shared.outbox import OutboxRelay, make_producer
from shared.topic_reader import read_topic
from shared.topics import TopicNames
from tests.integration.test_ledger_flow import (
    API_KEY,
    MIGRATIONS,
    WAIT,
    authorized,
    dump_projections,
    ledger_settings,
)
from tests.support import Infra

pytestmark = pytest.mark.integration


@dataclass
class LiveLedger:
    dsn: str
    pool: asyncpg.Pool
    topics: TopicNames
    bootstrap: str
    seed: bytes
    signers: LedgerSigners  # one key per purpose, derived from ``seed``
    url: str

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

    async def until(self, query: str, want: Any) -> None:
        deadline = asyncio.get_running_loop().time() + WAIT
        while (got := await self.pool.fetchval(query)) != want:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{query!r}: waited for {want!r}, have {got!r}")
            await asyncio.sleep(0.2)

    def base_args(self) -> list[str]:
        return [
            "--bootstrap",
            self.bootstrap,
            "--topic-prefix",
            self.topics.prefix,
            "--progress-every",
            "0",
        ]


@pytest.fixture
async def live(
    infra: Infra, kafka_topics: TopicNames, new_database: Callable[..., Awaitable[str]]
) -> AsyncIterator[LiveLedger]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    seed = secrets.token_bytes(32)
    signers = LedgerSigners.derive(seed)
    await register_signers(pool, signers)  # as the composition root does at start-up
    handlers = PostingSetup(
        ledger_topic=kafka_topics.ledger,
        keys=PostingKeys(
            check_key=b"h" * 32, signer=signers.receipts, journal_signer=signers.journal
        ),
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
    app = create_app(ledger_settings(1000), pool, signers=signers)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    tasks = [
        asyncio.create_task(consumer.run()),
        asyncio.create_task(relay.run()),
        asyncio.create_task(server.serve()),
    ]
    while not server.started:
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveLedger(
            dsn,
            pool,
            kafka_topics,
            infra.kafka_bootstrap,
            seed,
            signers,
            f"http://127.0.0.1:{port}",
        )
    finally:
        consumer.stop()
        relay.stop()
        server.should_exit = True
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        await pool.close()


async def audit(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    """Run the console script's ``main`` (it runs its own event loop, so in a thread).
    A ``--ledger-dsn`` with a password (a server that checks them, as the test
    containers' does) is given as an auditor must: the password in ``PGPASSWORD``.

    Returns the exit code and stdout (parsed with ``--json``, else text + stderr).
    """
    args, password = _password_apart(argv)
    before = os.environ.get("PGPASSWORD")
    if password is not None:
        os.environ["PGPASSWORD"] = password
    try:
        code = await asyncio.to_thread(main, args)
    finally:
        if password is not None:
            if before is None:
                os.environ.pop("PGPASSWORD", None)
            else:
                os.environ["PGPASSWORD"] = before
    captured = capsys.readouterr()
    if "--json" in argv and captured.out:
        # The live ledger's own logs share stdout; the report is the JSON object.
        start = 0 if captured.out.startswith("{") else captured.out.index("\n{\n") + 1
        return code, json.JSONDecoder().raw_decode(captured.out, start)[0]
    return code, captured.out + captured.err


def _password_apart(argv: tuple[str, ...]) -> tuple[list[str], str | None]:
    """``argv`` with the password taken out of the DSN after ``--ledger-dsn``, and it."""
    args, password = list(argv), None
    for i, arg in enumerate(args[:-1]):
        if arg == "--ledger-dsn":
            parts = urlsplit(args[i + 1])
            if parts.password is not None:
                password = unquote(parts.password)
                netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
                args[i + 1] = urlunsplit(parts._replace(netloc=netloc))
    return args, password


def kinds(report: Any) -> set[str]:
    return {d["kind"] for d in report["discrepancies"]}


def statuses(report: Any) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


async def test_audit_replay_rebuild_export_and_drift(
    live: LiveLedger, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    payer = f"u-{secrets.token_hex(4)}"
    payments = [
        authorized(payer, 100_000, method="bank_card", purpose="wallet_topup"),
        authorized(payer, 38_000, method="wallet", purpose="premium"),
        authorized(payer, 43_500, method="bank_card", purpose="premium", region="310000"),
        authorized(payer, 62_001, method="wallet", purpose="premium"),  # overdraft: rejected
    ]
    for env in payments:  # one by one: the overdraft must come after the premium
        await live.publish(env)
        await live.until(
            "SELECT (SELECT count(*) FROM journal) + (SELECT count(*) FROM rejections)",
            payments.index(env) + 1,
        )
    deadline = asyncio.get_running_loop().time() + WAIT
    while len(events := await read_topic(live.bootstrap, live.topics.ledger)) < 6:
        assert asyncio.get_running_loop().time() < deadline, "ledger.v1 did not fill up"
        await asyncio.sleep(0.3)
    key = [  # the receipts' key and the journal's (entries), pinned
        *("--public-key", live.signers.receipts.public_key_b64),
        *("--public-key", live.signers.journal.public_key_b64),
    ]
    live_db = ["--ledger-dsn", live.dsn]
    key_file = tmp_path / "api-key"  # secrets from files, never on the command line
    key_file.write_text(API_KEY + "\n")
    seed_file = tmp_path / "signing-key"
    seed_file.write_text(b64e(live.seed))

    # Before the payment service has spoken, every posting lacks its PaymentSucceeded.
    code, report = await audit(capsys, "replay", *live.base_args(), *key, "--json")
    assert code == 1
    assert kinds(report) == {"posting_without_payment"}
    lacking = report["discrepancies"]
    assert {d["payment_id"] for d in lacking} == {e.correlation_id for e in payments[:3]}
    assert all(
        d["where"]["topic"] == live.topics.ledger and d["where"]["offset"] is not None
        for d in lacking
    )

    # The payment service's outcomes, as it would publish them.
    by_payment = {e.correlation_id: e for e in payments}
    outcomes = []
    for event in events:
        p = event.payload
        if isinstance(p, JournalEntryPosted | PostingRejected):
            details = by_payment[p.payment_id].payload["payment"]
            common = {
                k: details[k]
                for k in (
                    "payment_id",
                    "payer_id",
                    "amount",
                    "method",
                    "payee_name",
                    "payer_phone_masked",
                    "payer_phone_sealed",
                )
            }
            common["purpose_type"] = details["purpose"]["type"]
            outcome = (
                PaymentSucceeded(**common, journal_seq=p.seq, receipt=p.receipt)
                if isinstance(p, JournalEntryPosted)
                else PaymentFailed(**common, decline_code="insufficient_funds", message=p.message)
            )
            outcomes.append(
                new_event(
                    outcome,
                    producer="payment",
                    key=payer,
                    correlation_id=p.payment_id,
                    causation_id=event.event_id,
                )
            )
    await live.publish(*outcomes)

    # Clean, from the broker, compared with the live database and the live API.
    code, report = await audit(
        capsys,
        "replay",
        *live.base_args(),
        *live_db,
        "--ledger-url",
        live.url,
        "--api-key-file",
        str(key_file),
        "--json",
    )
    assert code == 0, report["discrepancies"]
    assert statuses(report).pop("export") == "not_run"  # a Kafka replay has no manifest
    assert {k for k, v in statuses(report).items() if v != "ok"} == {"export"}
    assert report["counts"]["entries"] == 3
    assert report["counts"]["receipts"] == 2
    assert report["counts"]["rejections"] == 1
    assert report["counts"]["successes"] == 3
    assert "fetched from" in report["receipt_key"]["source"]

    # Really empty the projections, rebuild them through the audit command: identical.
    async with live.pool.acquire() as conn:
        before = await dump_projections(conn)
        await conn.execute("TRUNCATE balances, receipts, statement_lines")
        assert await conn.fetchval("SELECT count(*) FROM balances") == 0
        assert await conn.fetchval("SELECT count(*) FROM receipts") == 0
    code, out = await audit(capsys, "rebuild", *live.base_args(), *live_db, "--yes")
    assert code == 0, out
    assert "up to entry 3" in out
    async with live.pool.acquire() as conn:
        assert await dump_projections(conn) == before
    code, report = await audit(capsys, "replay", *live.base_args(), *live_db, *key, "--json")
    assert code == 0, report["discrepancies"]

    # Export with the ledger's signing key, replay offline (no Kafka, no database).
    out_file = tmp_path / "ledger-export.jsonl.gz"
    code, out = await audit(
        capsys,
        "export",
        *live.base_args(),
        "--out",
        str(out_file),
        "--signing-key-file",
        str(seed_file),
    )
    assert code == 0, out
    manifest = json.loads((tmp_path / "ledger-export.jsonl.gz.manifest.json").read_text())
    assert manifest["topics"][live.topics.ledger]["count"] == 6
    assert manifest["topics"][live.topics.payments]["count"] == 4 + 4
    assert manifest["key_id"] == live.signers.signer(SigningPurpose.MANIFESTS).key_id
    assert {k["purpose"] for k in manifest["public_keys"]} == {*SigningPurpose, "all"}
    code, report = await audit(
        capsys, "replay", "--from", str(out_file), *key, "--json", "--progress-every", "0"
    )
    assert code == 0, report["discrepancies"]
    assert report["head"]["seq"] == 3
    code, report = await audit(
        capsys, "replay", "--from", str(out_file), "--json", "--progress-every", "0"
    )
    assert code == 0
    assert "self-attested" in report["receipt_key"]["source"]

    # Drift in the live projection is named: the account, through the DB and the API.
    wallet = f"wallet:{payer}"
    await live.pool.execute(
        "UPDATE balances SET balance = balance + 1 WHERE account_id = $1", wallet
    )
    code, report = await audit(
        capsys,
        "replay",
        *live.base_args(),
        *live_db,
        "--ledger-url",
        live.url,
        "--api-key-file",
        str(key_file),
        "--json",
    )
    assert code == 1
    drift = [d for d in report["discrepancies"] if d["kind"] == "live_balance"]
    assert len(drift) == 2  # once from the table, once from the API
    assert all(wallet in d["message"] for d in drift)
    assert kinds(report) == {"live_balance"}  # balance_after lines are untouched


async def test_unreachable_inputs_exit_2(
    infra: Infra, capsys: pytest.CaptureFixture[str], topic_prefix: str
) -> None:
    code, out = await audit(
        capsys,
        "replay",
        "--bootstrap",
        infra.kafka_bootstrap,
        "--topic-prefix",
        topic_prefix,
        "--public-key",
        "A" * 43 + "=",
    )
    assert code == 2
    assert "does not exist" in out
    code, out = await audit(
        capsys,
        "rebuild",
        "--bootstrap",
        infra.kafka_bootstrap,
        "--ledger-dsn",
        "postgresql://postgres@127.0.0.1:1/none",
        "--topic-prefix",
        topic_prefix,
        "--yes",
    )
    assert code == 2
