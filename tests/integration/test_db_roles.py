"""Each service runs as its own PostgreSQL role with only what its grants.sql gives it
(issue 11): the ledger's role cannot rewrite, delete, truncate or unprotect the journal;
no runtime role is a superuser, owns a table or can create one; the roles are set up
idempotently by many instances and databases at once; and a service works with its
role end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from structlog.testing import capture_logs

from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.handlers import PostingSetup, build_handlers
from services.ledger.signing import ReceiptSigner
from services.notify.config import NotifySettings
from shared.consumer import InboxConsumer
from shared.db import (
    GRANTS_FILE,
    app_role_name,
    connect,
    create_pool,
    ensure_app_role,
    migrate,
    scram_sha256_verifier,
    with_credentials,
)
from shared.events import encode
from shared.outbox import OutboxRelay, make_producer
from shared.runtime import prepare_service, runtime_dsn
from shared.topic_reader import read_topic
from shared.topics import TopicNames
from tests.integration.test_ledger_flow import auth, authorized, ledger_settings
from tests.support import Infra

pytestmark = pytest.mark.integration

SERVICES = Path(__file__).resolve().parents[2] / "services"
NAMES = ("payment", "risk", "ledger", "notify")
NewDatabase = Callable[..., Awaitable[str]]
WAIT = 30.0
# Roles are cluster-wide and shared with every other test's services: one password
# for all keeps them logging in where the server checks passwords (not locally: trust).
APP_PASSWORD = os.environ.get("YIBAO_DB_APP_PASSWORD") or "yibao-test-app-password"


def grants_of(service: str) -> str:
    return (SERVICES / service / "migrations" / GRANTS_FILE).read_text()


def declared_privileges(grants_sql: str) -> set[tuple[str, str]]:
    """(table, privilege) for every ``GRANT … ON <tables> TO`` in a grants file."""
    found: set[tuple[str, str]] = set()
    for privs, tables in re.findall(r"GRANT ([A-Z, ]+) ON (?!SEQUENCE)([a-z_, ]+) TO", grants_sql):
        for table in tables.split(","):
            found |= {(table.strip(), p.strip()) for p in privs.split(",")}
    return found


async def held_privileges(conn: asyncpg.Connection, role: str) -> set[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = $1 AND table_schema = 'public'",
        role,
    )
    return {(r["table_name"], r["privilege_type"]) for r in rows}


async def migrated_with_role(new_database: NewDatabase, service: str) -> tuple[str, str]:
    """A fresh database with ``service``'s migrations: (privileged DSN, role's DSN)."""
    dsn = await new_database()
    await migrate(dsn, SERVICES / service / "migrations")
    app_dsn = await ensure_app_role(dsn, app_role_name(service), APP_PASSWORD, grants_of(service))
    return dsn, app_dsn


@pytest.mark.parametrize("service", NAMES)
async def test_a_runtime_role_holds_exactly_its_grants(
    infra: Infra, new_database: NewDatabase, service: str
) -> None:
    dsn, app_dsn = await migrated_with_role(new_database, service)
    role = app_role_name(service)
    assert urlsplit(app_dsn).username == role
    admin = await asyncpg.connect(dsn)
    app = await asyncpg.connect(app_dsn)
    try:
        assert await app.fetchval("SELECT current_user") == role
        attrs = await admin.fetchrow(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
            " rolbypassrls FROM pg_roles WHERE rolname = $1",
            role,
        )
        assert attrs is not None
        assert tuple(attrs) == (True, False, False, False, False, False)
        owned = await admin.fetchval(
            "SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles"
            " WHERE rolname = $1)",
            role,
        )
        assert owned == 0

        # Exactly what grants.sql says: nothing more (no TRUNCATE, REFERENCES, TRIGGER),
        # nothing on schema_migrations, and every table the migrations made is covered.
        declared = declared_privileges(grants_of(service))
        assert await held_privileges(admin, role) == declared
        tables = {
            r["tablename"]
            for r in await admin.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
        assert {t for t, _ in declared} == tables - {"schema_migrations"}

        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("CREATE TABLE sneaky (x int)")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DELETE FROM schema_migrations")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute("DROP TABLE inbox")
    finally:
        await app.close()
        await admin.close()


async def test_the_ledger_role_cannot_rewrite_or_unprotect_the_journal(
    infra: Infra, new_database: NewDatabase
) -> None:
    _, app_dsn = await migrated_with_role(new_database, "ledger")
    app = await connect(app_dsn)
    try:
        await app.execute(  # appending is what the ledger does
            "INSERT INTO journal (seq, payment_id, transaction_id, event_id, entry, hash,"
            " prev_hash, posted_at) VALUES (1, 'pay_1', $1, $2, $3, $4, $5, $6)",
            uuid.uuid4(),
            uuid.uuid4(),
            {"amount": 100},
            "a" * 64,
            "0" * 64,
            datetime.now(UTC),
        )
        refused = [
            "UPDATE journal SET entry = '{\"amount\": 1}'",
            "DELETE FROM journal",
            "TRUNCATE journal",
            "ALTER TABLE journal DISABLE TRIGGER journal_append_only",
            "ALTER TABLE journal DISABLE TRIGGER ALL",
            "DROP TRIGGER journal_append_only ON journal",
            "DROP TABLE journal",
            "ALTER TABLE journal OWNER TO CURRENT_USER",
            "CREATE OR REPLACE FUNCTION journal_is_append_only() RETURNS trigger"
            " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
            "SET session_replication_role = replica",  # would skip the triggers
        ]
        for statement in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
        row = await app.fetchrow("SELECT seq, entry FROM journal")
        assert row is not None
        assert (row["seq"], row["entry"]) == (1, {"amount": 100})
    finally:
        await app.close()


async def test_roles_are_set_up_at_once_by_many_instances_and_databases(
    infra: Infra, new_database: NewDatabase
) -> None:
    role, grants = app_role_name("risk"), grants_of("risk")
    dsns = [await new_database() for _ in range(3)]
    for dsn in dsns:
        await migrate(dsn, SERVICES / "risk" / "migrations")
    password = APP_PASSWORD
    app_dsns = await asyncio.gather(
        *(ensure_app_role(dsn, role, password, grants) for dsn in dsns for _ in range(3))
    )
    assert {urlsplit(d).username for d in app_dsns} == {role}
    for dsn in dsns:
        admin = await asyncpg.connect(dsn)
        try:
            assert await held_privileges(admin, role) == declared_privileges(grants)
        finally:
            await admin.close()

    # Again, with a right taken out of the file: gone after the next start.
    narrower = grants.replace(
        'GRANT SELECT, INSERT, DELETE ON phone_codes TO :"role";',
        'GRANT SELECT, INSERT ON phone_codes TO :"role";',
    )
    assert narrower != grants
    await ensure_app_role(dsns[0], role, password, narrower)
    admin = await asyncpg.connect(dsns[0])
    try:
        held = await held_privileges(admin, role)
        assert ("phone_codes", "DELETE") not in held
        assert held == declared_privileges(narrower)
    finally:
        await admin.close()


async def test_the_password_is_sent_as_the_verifier_postgres_would_store(infra: Infra) -> None:
    probe = f"yibao_probe_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        await conn.execute(f"CREATE ROLE {probe} LOGIN PASSWORD 'correct horse battery'")
        stored = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", probe)
        match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$.+", stored)
        assert match is not None
        salt = base64.b64decode(match.group(2))
        ours = scram_sha256_verifier(
            "correct horse battery", salt=salt, iterations=int(match.group(1))
        )
        assert ours == stored
    finally:
        await conn.execute(f"DROP ROLE IF EXISTS {probe}")
        await conn.close()


async def test_runtime_dsn_given_generated_or_fallen_back(
    infra: Infra, new_database: NewDatabase
) -> None:
    dsn = await new_database()
    grants = SERVICES / "ledger" / "migrations" / GRANTS_FILE
    await migrate(dsn, grants.parent)
    settings = LedgerSettings(dsn=dsn)

    given = "postgresql://operator_made@db.example:5432/ledger"
    assert await runtime_dsn(settings, grants, {"LEDGER_APP_DSN": given}) == given

    made = await runtime_dsn(settings, grants, {"YIBAO_DB_APP_PASSWORD": "shared-pw"})
    assert (urlsplit(made).username, urlsplit(made).password) == ("yibao_ledger_app", "shared-pw")
    own = await runtime_dsn(
        settings, grants, {"YIBAO_DB_APP_PASSWORD": "shared-pw", "LEDGER_DB_APP_PASSWORD": "own"}
    )
    assert urlsplit(own).password == "own"
    generated = await runtime_dsn(settings, grants, {})
    assert len(urlsplit(generated).password or "") >= 24

    # A migration DSN that cannot create roles (here: the runtime role itself): the
    # service connects with it as given, and says why.
    unprivileged = LedgerSettings(dsn=made)
    with capture_logs() as logs:
        assert await runtime_dsn(unprivileged, grants, {}) == made
    assert [e["event"] for e in logs] == ["db_runtime_role_skipped"]
    assert "cannot create roles" in logs[0]["reason"]


async def test_a_role_manager_that_does_not_own_the_tables_is_not_used(
    infra: Infra, new_database: NewDatabase
) -> None:
    """CREATEROLE without owning the tables: its GRANTs would only warn, leaving the
    runtime role without its rights, so the service keeps the given DSN."""
    dsn = await new_database()
    grants = SERVICES / "notify" / "migrations" / GRANTS_FILE
    await migrate(dsn, grants.parent)
    manager = f"yibao_probe_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE {manager} LOGIN CREATEROLE")
        manager_dsn = with_credentials(dsn, manager, "unused-under-trust")
        with capture_logs() as logs:
            got = await runtime_dsn(NotifySettings(dsn=manager_dsn), grants, {})
        assert got == manager_dsn
        assert "does not own every table" in logs[0]["reason"]
    finally:
        await admin.execute(f"DROP ROLE IF EXISTS {manager}")
        await admin.close()


async def test_prepare_service_leaves_the_service_on_its_role(
    infra: Infra, new_database: NewDatabase
) -> None:
    settings = LedgerSettings(dsn=await new_database())
    pool = await prepare_service(settings, SERVICES / "ledger" / "migrations")
    try:
        assert await pool.fetchval("SELECT current_user") == "yibao_ledger_app"
        # What else the service connects with (the relay's own connection) uses the role too.
        assert urlsplit(settings.database_url).username == "yibao_ledger_app"
    finally:
        await pool.close()


@pytest.fixture
async def ledger_as_role(
    infra: Infra, kafka_topics: TopicNames, new_database: NewDatabase
) -> AsyncIterator[tuple[asyncpg.Pool, httpx.AsyncClient]]:
    """The ledger's consumer, relay and API, all connected as yibao_ledger_app."""
    _, app_dsn = await migrated_with_role(new_database, "ledger")
    pool = await create_pool(app_dsn, max_size=4)
    signer = ReceiptSigner(uuid.uuid4().bytes * 2)
    setup = PostingSetup(
        ledger_topic=kafka_topics.ledger,
        keys=PostingKeys(check_key=b"h" * 32, signer=signer),
        policy=ReceiptPolicy(),
    )
    consumer = InboxConsumer(
        name=f"{kafka_topics.prefix}ledger",
        bootstrap=infra.kafka_bootstrap,
        topics=[kafka_topics.payments],
        pool=pool,
        handlers=build_handlers(setup),
    )
    relay = OutboxRelay(app_dsn, infra.kafka_bootstrap, poll_interval=0.2)
    tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(relay.run())]
    app = create_app(ledger_settings(1000), pool, signer=signer)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ledger"
    ) as http:
        try:
            yield pool, http
        finally:
            consumer.stop()
            relay.stop()
            for task in tasks:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 15)
            await pool.close()


async def test_the_ledger_books_and_publishes_as_its_role(
    infra: Infra,
    kafka_topics: TopicNames,
    ledger_as_role: tuple[asyncpg.Pool, httpx.AsyncClient],
) -> None:
    pool, http = ledger_as_role
    payer = f"u-{uuid.uuid4().hex[:8]}"
    producer = make_producer(infra.kafka_bootstrap)
    await producer.start()
    try:
        for event in (
            authorized(payer, 100_000, method="bank_card", purpose="wallet_topup"),
            authorized(payer, 38_000, method="wallet", purpose="premium"),
        ):
            await producer.send_and_wait(
                kafka_topics.payments, value=encode(event), key=payer.encode()
            )
    finally:
        await producer.stop()

    deadline = asyncio.get_running_loop().time() + WAIT
    events: list[object] = []
    while asyncio.get_running_loop().time() < deadline:
        events = list(await read_topic(infra.kafka_bootstrap, kafka_topics.ledger))
        if len(events) >= 3:
            break
        await asyncio.sleep(0.3)
    assert [e.event_type for e in events] == [  # type: ignore[attr-defined]
        "JournalEntryPosted",
        "JournalEntryPosted",
        "ReceiptIssued",
    ]
    assert await pool.fetchval("SELECT count(*) FROM journal") == 2
    r = await http.get(f"/v1/accounts/wallet:{payer}", headers=auth())
    assert r.status_code == 200, r.text
    assert int(r.json()["balance"]) == 62_000
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pool.execute("DELETE FROM journal")
