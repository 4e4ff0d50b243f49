"""Settlement against real Kafka, PostgreSQL and the development bank (its own process):
close a day, transfer, arrive, files, reconcile, audit; deficits carried; the bank down;
the ledger killed (kill -9) mid-close and mid-transfer settles nothing twice.

Run as ``python -m tests.integration.test_settlement_flow crash-close|crash-transfer
DSN TOPIC SEED [BANK_URL]`` it is the ledger process the kill tests kill.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.ledger import store
from services.ledger.api import create_app
from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.config import LedgerSettings
from services.ledger.domain.clearing import DEFAULT_CUTOFF, clearing_day_of
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.settlement import routes, service, transfers
from services.ledger.settlement import store as sstore
from services.ledger.settlement.service import SettlementSetup
from services.ledger.settlement.transfers import BankTransfers, TransferSender
from services.ledger.signing import (
    LedgerSigners,
    ReceiptSigner,
    SigningPurpose,
    checkpoint_verifies,
)
from shared import outbox
from shared.consumer import InboxConsumer
from shared.db import create_pool, migrate
from shared.events import (
    BankConfirmation,
    BankStatementReconciled,
    Envelope,
    JournalCheckpoint,
    PaymentAuthorized,
    Purpose,
    RefundAuthorized,
    encode,
    new_event,
)
from shared.money import SHANGHAI
from shared.outbox import OutboxRelay, make_producer
from shared.topic_reader import read_topic
from shared.topics import TopicNames
from tests.integration.test_ledger_flow import MIGRATIONS, authorized, dump_projections
from tests.support import Infra, eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CALLER, OPERATOR = "settle-caller-key", "settle-operator-key"
BUREAU_SH, BUREAU_BJ = "settle-bureau-310000", "settle-bureau-110000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Bank:
    """The development bank as its own process; ``kill`` is kill -9, ``start`` reopens
    the same books."""

    workdir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "BANK_GATEWAY_PORT": str(self.port),
            "BANK_GATEWAY_STORE": str(self.workdir / "bank.sqlite3"),
            "YIBAO_ENVIRONMENT": "test",
        }
        log = (self.workdir / "bank.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.devbank"], cwd=REPO, env=env, stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the bank did not start: {(self.workdir / 'bank.log').read_text()}")
            time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def transfer(self, reference: str) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/transfers/{reference}", timeout=10).json())

    def statement(self, day: date) -> str:
        r = httpx.get(f"{self.url}/statements/{day}.csv", timeout=10)
        assert r.status_code == 200, r.text
        return r.text


@pytest.fixture
def bank() -> Iterator[Bank]:
    b = Bank(Path(tempfile.mkdtemp(prefix="yibao-settle-bank-")), _free_port())
    b.start()
    yield b
    b.stop()


@dataclass
class Ledger:
    dsn: str
    pool: asyncpg.Pool
    topics: TopicNames
    bootstrap: str
    seed: bytes
    signer: ReceiptSigner  # the journal's key: entries and checkpoints
    setup: SettlementSetup
    sender: TransferSender
    http: httpx.AsyncClient
    bank: Bank
    signers: LedgerSigners  # one key per purpose, derived from ``seed``

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

    async def entries(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM journal"))

    async def until_entries(self, n: int) -> None:
        async def enough() -> bool:
            return await self.entries() >= n

        await eventually(enough, within=30)

    async def pay(self, region: str, amount: int, payer: str = "u-s1") -> Envelope:
        """A bank-card premium the bank really debited, authorized with its confirmation."""
        env = authorized(payer, amount, method="bank_card", purpose="premium", region=region)
        assert env.correlation_id is not None
        self.bank.post(
            "/debits",
            {
                "reference": f"bk_{env.correlation_id}",
                "amount": amount,
                "currency": "CNY",
                "payer_ref": payer,
            },
        )
        await self.publish(env)
        return env

    async def refund(self, paid: Envelope, amount: int) -> str:
        p = PaymentAuthorized.model_validate(paid.payload).payment
        refund_id = f"re_{uuid.uuid4().hex[:12]}"
        reference = f"bk_{refund_id}"
        self.bank.post(
            "/refunds",
            {"reference": reference, "debit_reference": f"bk_{p.payment_id}", "amount": amount},
        )
        seq = await self.pool.fetchval(
            "SELECT seq FROM journal WHERE payment_id = $1 AND refund_id IS NULL", p.payment_id
        )
        refund = RefundAuthorized(
            refund_id=refund_id,
            payment_id=p.payment_id,
            payer_id=p.payer_id,
            amount=amount,
            method=p.method,
            purpose=Purpose.model_validate(p.purpose.model_dump()),
            payee_id=p.payee_id,
            payee_name=p.payee_name,
            original_journal_seq=seq,
            original_receipt=None,
            bank_refund=BankConfirmation(reference=reference, confirmed_at=datetime.now(UTC)),
            payer_phone_masked="138****8000",
            payer_phone_sealed="v1.sealed-for-test",
            authorized_at=datetime.now(UTC),
        )
        await self.publish(
            new_event(refund, producer="payment", key=p.payer_id, correlation_id=p.payment_id)
        )
        return refund_id

    async def get(self, path: str, key: str = OPERATOR) -> httpx.Response:
        return await self.http.get(path, headers={"Authorization": f"Bearer {key}"})

    async def post(
        self, path: str, key: str = OPERATOR, headers: dict[str, str] | None = None, **kw: Any
    ) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}", **(headers or {})}
        return await self.http.post(path, headers=auth, **kw)

    async def day(self, day: date, key: str = OPERATOR) -> dict[str, Any]:
        r = await self.get(f"/v1/settlement/days/{day}", key)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def close(self, day: date) -> dict[str, Any]:
        r = await self.post(f"/v1/settlement/days/{day}/close?force=true")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def balance(self, account: str) -> int:
        r = await self.get(f"/v1/accounts/{account}", CALLER)
        assert r.status_code == 200, r.text
        return int(r.json()["balance"])

    async def settle_all(self) -> None:
        while await self.sender.send_one():
            pass


def ledger_settings() -> LedgerSettings:
    return LedgerSettings(
        YIBAO_API_KEYS=CALLER,
        YIBAO_OPERATOR_API_KEYS=OPERATOR,
        YIBAO_BUREAU_API_KEYS=f"310000:{BUREAU_SH},110000:{BUREAU_BJ}",
    )


def settlement_setup(topics: TopicNames, signers: LedgerSigners) -> SettlementSetup:
    return SettlementSetup(
        topics.ledger,
        signers.journal,
        DEFAULT_CUTOFF,
        "devbank",
        may_force=True,
        file_signer=signers.signer(SigningPurpose.SETTLEMENT),
    )


@pytest.fixture
async def ledger(
    infra: Infra,
    kafka_topics: TopicNames,
    new_database: Callable[..., Awaitable[str]],
    bank: Bank,
) -> AsyncIterator[Ledger]:
    dsn = await new_database()
    await migrate(dsn, MIGRATIONS)
    pool = await create_pool(dsn, max_size=5)
    seed = uuid.uuid4().bytes * 2
    signers = LedgerSigners.derive(seed)
    signer = signers.journal
    posting = PostingSetup(
        ledger_topic=kafka_topics.ledger,
        keys=PostingKeys(check_key=b"h" * 32, signer=signers.receipts, journal_signer=signer),
        policy=ReceiptPolicy(),
    )
    consumer = InboxConsumer(
        name=f"{kafka_topics.prefix}ledger",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.payments],
        pool=pool,
        handlers=build_handlers(posting),
    )
    relay = OutboxRelay(dsn, infra.kafka_bootstrap, poll_interval=0.2)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    setup = settlement_setup(kafka_topics, signers)
    client = BankTransfers(bank.url, timeout=3.0)
    sender = TransferSender(pool, setup, client, lease_seconds=0.3, retry_base_seconds=0.05)
    app = create_app(ledger_settings(), pool, signers=signers, settlement=setup)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ledger") as http:
        try:
            yield Ledger(
                dsn,
                pool,
                kafka_topics,
                infra.kafka_bootstrap,
                seed,
                signer,
                setup,
                sender,
                http,
                bank,
                signers,
            )
        finally:
            consumer.stop()
            relay.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)
            await client.close()
            await pool.close()


def today() -> date:
    return clearing_day_of(datetime.now(UTC))


def rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


async def audit(ledger: Ledger, *checkpoints: JournalCheckpoint) -> list[tuple[str, str]]:
    """Replay ledger.v1 (once the relay published everything) through the auditor."""
    want = int(await ledger.pool.fetchval("SELECT count(*) FROM outbox"))

    async def published() -> list[Any] | None:
        events = await read_topic(ledger.bootstrap, ledger.topics.ledger)
        return events if len(events) >= want else None

    events = await eventually(published, within=30)
    auditor = Auditor(
        public_key=ledger.signer.public_raw,
        other_keys=(ledger.signers.receipts.public_raw,),
        purposes={s.key_id: p for p, s in ledger.signers.published()},
    )
    auditor.settlement.given.extend((cp, f"checkpoint {cp.seq}") for cp in checkpoints)
    for n, event in enumerate(events):
        auditor.ledger(event, Where("ledger.v1", 0, n))
    auditor.finish()
    return [(d.kind, d.message) for d in auditor.findings.kept]


# ---------------------------------------------------------------------------


async def test_close_transfer_arrive_file_reconcile_and_audit(ledger: Ledger) -> None:
    day = today()
    first = await ledger.pay("310000", 38_000)
    await ledger.pay("310000", 12_000)
    await ledger.pay("310000", 5_000)
    await ledger.until_entries(3)
    await ledger.refund(first, 8_000)
    await ledger.until_entries(4)

    open_ = await ledger.day(day)
    assert open_["status"] == "open" and open_["checkpoint"] is None
    [r] = open_["regions"]
    assert (r["region"], r["count"], r["paid"], r["refunded"], r["net"], r["settled"]) == (
        "310000",
        4,
        55_000,
        8_000,
        47_000,
        False,
    )
    early = await ledger.post(f"/v1/settlement/days/{day}/close")
    assert early.status_code == 409 and "23:00" in early.json()["error"]["message"]
    assert (await ledger.post(f"/v1/settlement/days/{day}/close", CALLER)).status_code == 403
    assert (await ledger.post(f"/v1/settlement/days/{day}/close", BUREAU_SH)).status_code == 403

    closed = await ledger.close(day)
    assert closed["status"] == "closed" and closed["forced"] is True
    [r] = closed["regions"]
    assert (r["net"], r["transfer_amount"], r["transfer_status"], r["settled"]) == (
        47_000,
        47_000,
        "pending",
        False,
    )
    reference = r["transfer_reference"]
    assert reference == f"st_{day}_310000"
    checkpoint = JournalCheckpoint.model_validate(closed["checkpoint"])
    assert checkpoint.seq == 5 and checkpoint_verifies(checkpoint, ledger.signer.public_raw)
    assert await ledger.close(day) == closed  # closing a closed day changes nothing
    assert await ledger.entries() == 5
    assert await ledger.balance("cash:310000:transit:devbank") == 47_000
    assert await ledger.balance("cash:310000:platform") == 0

    await ledger.settle_all()
    settled = await ledger.day(day)
    assert settled["status"] == "settled" and settled["regions"][0]["settled"] is True
    assert await ledger.balance("cash:310000:bureau") == 47_000
    assert await ledger.balance("cash:310000:collected") == -47_000
    assert await ledger.balance("bureau:310000:premium") == 47_000
    answer = ledger.bank.transfer(reference)
    assert answer["status"] == "succeeded"

    # The bureau's file: its own region, signed, the day's checkpoint with it.
    f = await ledger.get(f"/v1/settlement/days/{day}/bureaus/310000.csv", BUREAU_SH)
    assert f.status_code == 200, f.text
    table = rows(f.text)
    assert table[0][:4] == ["payment_id", "kind", "amount", "journal_seq"]
    assert [(x[1], int(x[2])) for x in table[1:-1]] == [
        ("payment", 38_000),
        ("payment", 12_000),
        ("payment", 5_000),
        ("refund", -8_000),
    ]
    assert table[-1] == ["TOTAL", "4", "55000", "8000", "47000"]
    assert "张三" not in f.text
    keys = {k["key_id"]: k for k in (await ledger.http.get("/v1/journal/public-keys")).json()}
    key = keys[f.headers["X-Key-Id"]]  # the settlement files' own key, not the journal's
    assert key["purpose"] == "settlement"
    public = base64.b64decode(key["public_key"])
    Ed25519PublicKey.from_public_bytes(public).verify(
        base64.b64decode(f.headers["X-Signature"]), f.content
    )
    assert f.headers["X-Key-Id"] == ledger.signers.signer(SigningPurpose.SETTLEMENT).key_id
    assert f.headers["X-Key-Id"] != ledger.signer.key_id
    header_cp = json.loads(base64.b64decode(f.headers["X-Journal-Checkpoint"]))
    assert header_cp == closed["checkpoint"]
    again = await ledger.get(f"/v1/settlement/days/{day}/bureaus/310000.csv")
    assert again.content == f.content  # same bytes every time, operator or bureau
    other = await ledger.get(f"/v1/settlement/days/{day}/bureaus/310000.csv", BUREAU_BJ)
    assert other.status_code == 404
    assert (await ledger.day(day, BUREAU_BJ))["regions"] == []

    # Postings after a forced close belong to the next day.
    await ledger.pay("310000", 1_000)
    await ledger.until_entries(7)
    late = await ledger.pool.fetchval("SELECT clearing_day FROM journal WHERE seq = 7")
    assert late == day + timedelta(days=1)

    # Reconciliation against the bank's own statement: clean, and the same twice.
    text = ledger.bank.statement(day)
    url = f"/v1/settlement/days/{day}/reconciliations"
    headers = {"Content-Type": "text/csv"}
    clean = await ledger.post(url, content=text.encode(), headers=headers)
    assert clean.status_code == 200, clean.text
    assert clean.json()["discrepancies"] == [] and clean.json()["matched"] == 6
    assert (await ledger.post(url, content=text.encode(), headers=headers)).json() == clean.json()
    lines = text.splitlines()
    removed = next(x for x in lines if x.startswith(f"bk_{first.correlation_id},"))
    changed = next(x for x in lines if x.startswith(f"{reference},"))
    tampered = [x for x in lines if x != removed]
    tampered = [x.replace(",47000,", ",47001,") if x == changed else x for x in tampered]
    bad = await ledger.post(url, content="\n".join(tampered).encode(), headers=headers)
    found = {(d["kind"], d["reference"]) for d in bad.json()["discrepancies"]}
    assert found == {
        ("missing_in_bank", f"bk_{first.correlation_id}"),
        ("amount_mismatch", reference),
    }
    broken = await ledger.post(url, content=b"reference,kind,amount\nx,debit,-1\n", headers=headers)
    assert broken.status_code == 400 and "line 2" in broken.json()["error"]["message"]
    arabic = "reference,kind,amount\nx,debit,\u0664\u0667\u0660\u0660\u0660\n"  # ٤٧٠٠٠
    other_digits = await ledger.post(url, content=arabic.encode(), headers=headers)
    assert other_digits.status_code == 400 and "'amount'" in other_digits.json()["error"]["message"]

    # The auditor replays all of it clean, and a checkpoint taken now holds.
    now = await ledger.http.get("/v1/journal/checkpoint")
    assert now.status_code == 200
    head = JournalCheckpoint.model_validate(now.json())
    assert head.seq == 7 and checkpoint_verifies(head, ledger.signer.public_raw)
    assert await audit(ledger, head) == []
    ahead = head.model_copy(update={"seq": 8})
    kinds = {k for k, _ in await audit(ledger, ahead)}
    assert kinds == {"checkpoint_unreached", "checkpoint_signature"}


async def test_a_statement_over_a_megabyte_is_reconciled_published_and_audited(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A day's statement is as large as the day: 20 MiB of it gets past the API edge
    (the route has ``{day}`` in its path), and its outcome, statement included, is
    published on ledger.v1 although it is over Kafka's default 1 MB message (the topic,
    the producer and the consumers all take it). An outcome over an event's limit is
    refused with 413 and nothing is recorded, so no outbox row can block the others."""
    first = await ledger.pay("310000", 1_000)
    await ledger.until_entries(1)
    day = today()
    header, *bank_lines = rows(ledger.bank.statement(day))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*header, "memo"])
    writer.writerows([*line, "m" * 1000] for line in bank_lines)
    at = {name: header.index(name) for name in ("reference", "kind", "amount")}
    for n in range(1_100):  # debits the ledger never saw: one discrepancy each
        line = [""] * len(header)
        line[at["reference"]], line[at["kind"]], line[at["amount"]] = f"bk_x{n}", "debit", "100"
        writer.writerow([*line, "m" * 1000])
    text = out.getvalue()
    assert 1024 * 1024 < len(text) < routes.MAX_STATEMENT_BYTES
    url = f"/v1/settlement/days/{day}/reconciliations"
    headers = {"Content-Type": "text/csv"}

    monkeypatch.setattr(outbox, "MAX_EVENT_BYTES", 1024 * 1024)
    refused = await ledger.post(url, content=text.encode(), headers=headers)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"], error["max_bytes"]) == (
        "request_too_large",
        "body",
        1024 * 1024,
    )
    assert "1100 discrepancies" in error["message"]
    assert await ledger.pool.fetchval("SELECT count(*) FROM reconciliations") == 0
    monkeypatch.undo()

    over = await ledger.post(url, content=b"x" * (routes.MAX_STATEMENT_BYTES + 1), headers=headers)
    assert over.status_code == 413
    assert over.json()["error"]["max_bytes"] == routes.MAX_STATEMENT_BYTES

    seen: list[str] = []

    async def on_reconciled(_conn: asyncpg.Connection, event: Any) -> None:
        seen.append(BankStatementReconciled.model_validate(event.payload).statement)

    reader = InboxConsumer(  # a service's consumer settings (1 MiB partition fetch)
        name=f"{ledger.topics.prefix}reader",
        bootstrap=ledger.bootstrap,
        topics=[ledger.topics.ledger],
        pool=ledger.pool,
        handlers={"BankStatementReconciled": on_reconciled},
    )
    task = asyncio.create_task(reader.run())
    try:
        done = await ledger.post(url, content=text.encode(), headers=headers)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["matched"] == 1
        assert {(d["kind"], d["reference"]) for d in body["discrepancies"]} == {
            ("missing_in_ledger", f"bk_x{n}") for n in range(1_100)
        }
        assert f"bk_{first.correlation_id}" not in {d["reference"] for d in body["discrepancies"]}
        value = await ledger.pool.fetchval(
            "SELECT value FROM outbox WHERE event_type = 'BankStatementReconciled'"
        )
        assert len(value) > 1024 * 1024  # over Kafka's default message size

        async def delivered() -> bool:
            return seen == [text]

        await eventually(delivered, within=30)
    finally:
        reader.stop()
        await asyncio.wait_for(task, 15)
    assert await audit(ledger) == []  # the auditor recomputes it from the statement


async def test_a_deficit_is_carried_into_the_next_close_as_a_deduction(ledger: Ledger) -> None:
    d1 = today()
    paid = await ledger.pay("440100", 3_000, payer="u-gz")
    await ledger.until_entries(1)
    assert (await ledger.close(d1))["regions"][0]["transfer_amount"] == 3_000
    d2 = d1 + timedelta(days=1)
    await ledger.refund(paid, 3_000)  # after the day was closed: the next day's deduction
    await ledger.until_entries(3)
    [r2] = (await ledger.close(d2))["regions"]
    assert (r2["paid"], r2["refunded"], r2["net"], r2["transfer_amount"]) == (0, 3_000, -3_000, 0)
    assert r2["settled"] is True and r2["transfer_reference"] is None
    d3 = d2 + timedelta(days=1)
    await ledger.pay("440100", 5_000, payer="u-gz")
    await ledger.until_entries(4)
    [r3] = (await ledger.close(d3))["regions"]
    assert (r3["paid"], r3["carried_in"], r3["net"], r3["transfer_amount"]) == (
        5_000,
        -3_000,
        2_000,
        2_000,
    )
    f = await ledger.get(f"/v1/settlement/days/{d3}/bureaus/440100.csv")
    table = rows(f.text)
    assert table[-2][:3] == ["carried_deficit", "deduction", "-3000"] and table[-2][-1] == str(d2)
    assert table[-1] == ["TOTAL", "1", "5000", "0", "2000"]
    refund_line = rows((await ledger.get(f"/v1/settlement/days/{d2}/bureaus/440100.csv")).text)[1]
    assert refund_line[1] == "refund" and refund_line[-1] == str(d1)  # named: an earlier payment
    await ledger.settle_all()
    assert await ledger.balance("cash:440100:bureau") == 5_000
    assert await ledger.balance("cash:440100:platform") == 0
    assert await audit(ledger) == []
    # The projections rebuild byte for byte from ledger.v1, settlement entries and all.
    async with ledger.pool.acquire() as conn:
        before = await dump_projections(conn)
        events = await read_topic(ledger.bootstrap, ledger.topics.ledger)
        assert {e.event_type for e in events} >= {"ClearingDayClosed", "JournalEntryPosted"}
        await store.rebuild_projections(conn, events)
        assert await dump_projections(conn) == before


async def test_transfers_wait_for_a_bank_killed_and_restarted(ledger: Ledger) -> None:
    day = today()
    await ledger.pay("310000", 9_000)
    await ledger.until_entries(1)
    reference = (await ledger.close(day))["regions"][0]["transfer_reference"]
    ledger.bank.kill()
    assert await ledger.sender.send_one()
    [r] = (await ledger.day(day))["regions"]
    assert (r["transfer_status"], r["transfer_attempts"]) == ("pending", 1)
    assert "no answer from the bank" in r["transfer_last_error"]
    ledger.bank.start()

    async def arrived() -> bool:
        await ledger.sender.send_one()
        return (await ledger.day(day))["status"] == "settled"

    await eventually(arrived, within=30)
    transfers_ = [x for x in rows(ledger.bank.statement(day)) if x[0] == reference]
    assert len(transfers_) == 1
    assert (
        await ledger.pool.fetchval("SELECT count(*) FROM journal WHERE kind = 'settlement_arrival'")
        == 1
    )


def run_killed(ledger: Ledger, what: str) -> int:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.integration.test_settlement_flow",
            what,
            ledger.dsn,
            ledger.topics.ledger,
            ledger.seed.hex(),
            ledger.bank.url,
        ],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return proc.returncode


async def test_a_ledger_killed_mid_close_settles_nothing_then_closes_once(ledger: Ledger) -> None:
    day = today()
    await ledger.pay("310000", 4_000)
    await ledger.until_entries(1)
    outbox = await ledger.pool.fetchval("SELECT count(*) FROM outbox")
    run_killed(ledger, "crash-close")
    assert await sstore.closed_day(ledger.pool, day) is None
    assert await ledger.entries() == 1
    assert await ledger.pool.fetchval("SELECT count(*) FROM outbox") == outbox
    await ledger.close(day)
    await ledger.close(day)
    assert await ledger.pool.fetchval("SELECT count(*) FROM journal WHERE kind = 'settlement'") == 1
    await ledger.settle_all()
    assert (await ledger.day(day))["status"] == "settled"
    assert await audit(ledger) == []


async def test_a_ledger_killed_mid_transfer_transfers_once(ledger: Ledger) -> None:
    day = today()
    await ledger.pay("310000", 6_000)
    await ledger.until_entries(1)
    reference = (await ledger.close(day))["regions"][0]["transfer_reference"]
    run_killed(ledger, "crash-transfer")  # the bank booked it; the ledger did not hear
    answer = ledger.bank.transfer(reference)
    assert answer["status"] == "succeeded"
    assert (await ledger.day(day))["status"] == "closed"

    async def arrived() -> bool:
        await ledger.sender.send_one()
        return (await ledger.day(day))["status"] == "settled"

    await eventually(arrived, within=30)
    assert len([x for x in rows(ledger.bank.statement(day)) if x[0] == reference]) == 1
    assert (
        await ledger.pool.fetchval("SELECT count(*) FROM journal WHERE kind = 'settlement_arrival'")
        == 1
    )
    assert await ledger.balance("cash:310000:bureau") == 6_000


# ---------------------------------------------------------------------------
# The process the kill tests kill
# ---------------------------------------------------------------------------


def _die(*_args: Any, **_kw: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


async def _killed_main(what: str, dsn: str, topic: str, seed: str, bank_url: str) -> None:
    pool = await create_pool(dsn, max_size=2)
    signers = LedgerSigners.derive(bytes.fromhex(seed))  # as the ledger it stands in for
    setup = SettlementSetup(topic, signers.journal, DEFAULT_CUTOFF, "devbank", may_force=True)
    if what == "crash-close":
        # Killed inside the close's transaction: entries and the closed day written,
        # transfers not yet, nothing committed.
        sstore.insert_transfers = _die  # type: ignore[assignment]
        await service.close_day(pool, setup, today(), force=True)
    else:
        # Killed after the bank answered, before the arrival is booked.
        transfers.book_arrival = _die  # type: ignore[assignment]
        sender = TransferSender(pool, setup, BankTransfers(bank_url), lease_seconds=0.3)
        await sender.send_one()
    raise SystemExit("not killed")


if __name__ == "__main__":
    asyncio.run(_killed_main(*sys.argv[1:6]))


async def test_the_scheduler_closes_a_day_once_its_cutoff_has_passed(ledger: Ledger) -> None:
    day = today()
    await ledger.pay("310000", 7_000)
    await ledger.until_entries(1)
    assert await service.close_due_days(ledger.pool, ledger.setup) == []  # not yet
    after_cutoff = datetime.combine(day, DEFAULT_CUTOFF, SHANGHAI) + timedelta(minutes=1)
    later = replace(ledger.setup, clock=lambda: after_cutoff.astimezone(UTC), may_force=False)
    assert await service.close_due_days(ledger.pool, later) == [day]
    assert await service.close_due_days(ledger.pool, later) == []
    closed = await ledger.day(day)
    assert closed["status"] == "closed" and closed["forced"] is False
    assert closed["regions"][0]["transfer_amount"] == 7_000
