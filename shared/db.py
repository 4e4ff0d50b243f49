"""asyncpg plumbing: pools, databases, a small migration runner and the runtime roles.

A service migrates with the privileged DSN, then connects as its own runtime role
``yibao_<service>_app`` (``ensure_app_role``): LOGIN, no superuser, CREATEDB or
CREATEROLE, owner of nothing, granted exactly what its ``migrations/grants.sql`` says.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import socket
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import asyncpg
import structlog

from shared import polling

log = structlog.get_logger(__name__)

SHARED_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x59_42_41_4F_4D_49_47  # "YBAOMIG": one migrator at a time per database
_GRANTS_LOCK = 0x59_42_41_4F_47_52_54  # "YBAOGRT": one grants run at a time per database
GRANTS_FILE = "grants.sql"  # beside the migrations, applied after them; not a migration
ROLE_PLACEHOLDER = ':"role"'  # psql's quoted-identifier variable: `psql -v role=…` works too

# Errors that say "try again" about the database, never "this work is wrong": the
# connection or server is gone or busy (class 08, 53, 57P0x, interface errors, pool
# timeouts, sockets), or the transaction lost a race (class 40: deadlock_detected,
# serialization_failure; 55P03 lock_not_available; 57014 a statement or lock timeout).
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.InterfaceError,  # ConnectionDoesNotExistError, "pool is closing"
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InsufficientResourcesError,  # too_many_connections, disk_full
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TransactionRollbackError,  # deadlock, serialization failure
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout, lock_timeout
    ConnectionError,
    TimeoutError,  # a pool acquire or a command that timed out
    socket.gaierror,
)


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a database outage or lost race:
    the same work retried later may succeed, so it is never the work's fault."""
    seen: BaseException | None = exc
    for _ in range(5):  # a handler may wrap the driver's error: follow ``raise … from``
        if seen is None:
            return False
        # A bare OSError is how asyncpg reports every address refusing a connection;
        # its subclasses (FileNotFoundError, …) are bugs, not outages.
        if isinstance(seen, TRANSIENT_DB_ERRORS) or type(seen) is OSError:
            return True
        seen = seen.__cause__
    return False


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PoolConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg is untyped
    """A pool connection that carries the in-process wake-ups its work marked
    (``shared.polling.after_release``) until it goes back to the pool."""

    __slots__ = ("wakeups",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wakeups: set[str] = set()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's ``reset``: nothing to send; the wake-ups the connection's work marked
    are signalled (``shared.polling``: its transaction is over by now).

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL;`` on every release: one more round trip per request and per batch. Pool
    connections never hold session state (advisory locks are ``_xact_`` ones, cursors
    live in transactions, session locks use their own connections), and
    asyncpg still rolls back a transaction left open before calling this, so skipping
    the query keeps every guarantee.
    """
    polling.released(conn)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections decode json/jsonb to Python objects; releasing a
    connection costs no round trip and delivers its in-process wake-ups
    (``_keep_session``)."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        connection_class=PoolConnection,
        command_timeout=30,
    )
    assert pool is not None
    return pool


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


def with_database(dsn: str, name: str) -> str:
    """The same server DSN pointing at database ``name``."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def ensure_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` if missing (needs a superuser DSN); return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Another process may create it between the look and the create.
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, closing its connections (a scratch database
    of a benchmark or a test; needs a superuser DSN)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def migrate(dsn: str, service_dir: Path | None) -> list[str]:
    """Apply the shared migrations, then ``service_dir``'s, each once and in name order.

    Each file runs in its own transaction and is recorded in ``schema_migrations``;
    an advisory lock keeps two starting instances from racing.
    """
    sources = [("shared", SHARED_MIGRATIONS)]
    if service_dir is not None:
        sources.append(("service", service_dir))
    applied: list[str] = []
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for label, folder in sources:
            for path in sorted(folder.glob("*.sql")):
                name = f"{label}/{path.name}"
                if name in done or path.name == GRANTS_FILE:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
                applied.append(name)
                log.info("migration_applied", migration=name)
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        await conn.close()
    return applied


# ---------------------------------------------------------------------------
# Runtime roles
# ---------------------------------------------------------------------------

_ROLE_RACES: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DuplicateObjectError,  # CREATE ROLE: another session made it first
    asyncpg.exceptions.UniqueViolationError,  # the same race, caught by pg_authid's index
    asyncpg.exceptions.InternalServerError,  # "tuple concurrently updated" (ALTER ROLE)
)
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


class RolesNotManaged(Exception):
    """The privileged DSN cannot create roles or grant on the service's tables: the
    service connects with that DSN as it is (the caller logs why)."""


def app_role_name(service: str) -> str:
    """The runtime role of ``service``: ``yibao_<service>_app``."""
    return f"yibao_{service}_app"


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier, always quoted (as ``quote_ident`` would)."""
    if "\x00" in name:
        raise ValueError("an identifier cannot hold a NUL character")
    return '"' + name.replace('"', '""') + '"'


def render_grants(sql: str, role: str) -> str:
    """``sql`` with every ``:"role"`` replaced by ``role`` as a quoted identifier."""
    return sql.replace(ROLE_PLACEHOLDER, quote_ident(role))


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    ``ALTER ROLE … PASSWORD '<verifier>'`` sets the password without the clear text
    ever reaching the server (its logs, pg_stat_statements). ASCII passwords only:
    SASLprep leaves them as they are, so client and server agree.
    """
    if not password.isascii():
        raise ValueError("the runtime role's password must be ASCII")
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def with_credentials(dsn: str, user: str, password: str) -> str:
    """``dsn`` (a ``postgresql://`` URL) logging in as ``user`` with ``password``;
    host, port, database and other options stay."""
    parts = urlsplit(dsn)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{hostport}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("user", "password")]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query)))


async def ensure_app_role(dsn: str, role: str, password: str, grants_sql: str) -> str:
    """Create or update the runtime ``role`` through the privileged ``dsn`` and grant it,
    in ``dsn``'s database, exactly ``grants_sql`` (``:"role"`` names it); return the DSN
    that connects as ``role``.

    Idempotent and safe when several instances (or many test databases) run it at once:
    roles are cluster-wide, so role changes are serialised on ``pg_authid`` (and lost
    races retried); grants are per database, under an advisory lock. Each run first
    revokes what the role held on the schema's tables and sequences, so a right taken
    out of ``grants.sql`` is gone after the next start. Raises ``RolesNotManaged`` when
    ``dsn`` cannot create roles or grant on the tables.
    """
    conn = await asyncpg.connect(dsn)
    try:
        me = await conn.fetchrow(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        )
        if me is None or not (me["rolsuper"] or me["rolcreaterole"]):
            raise RolesNotManaged("the migration DSN's user cannot create roles")
        if not me["rolsuper"] and await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            " AND tableowner <> current_user"
        ):  # a GRANT on another's table only warns: the role would miss its rights
            raise RolesNotManaged("the migration DSN's user does not own every table")
        try:
            await _create_or_update_role(conn, role, password, lock=bool(me["rolsuper"]))
            await _grant(conn, role, grants_sql)
        except asyncpg.exceptions.InsufficientPrivilegeError as exc:
            raise RolesNotManaged(f"the migration DSN's user may not set up {role}: {exc}") from exc
    finally:
        await conn.close()
    return with_credentials(dsn, role, password)


async def _create_or_update_role(
    conn: asyncpg.Connection, role: str, password: str, *, lock: bool
) -> None:
    ident = quote_ident(role)
    attributes = (
        "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT"
        f" PASSWORD '{scram_sha256_verifier(password)}'"  # base64 and digits: no quotes
    )
    for attempt in range(1, 6):
        try:
            async with conn.transaction():
                if lock:  # a shared catalog: the lock holds across every database
                    await conn.execute(
                        "LOCK TABLE pg_catalog.pg_authid IN SHARE ROW EXCLUSIVE MODE"
                    )
                exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
                verb = "ALTER" if exists else "CREATE"
                await conn.execute(f"{verb} ROLE {ident} {attributes}")
        except _ROLE_RACES:
            if attempt == 5:
                raise
            await asyncio.sleep(0.05 * attempt)
        else:
            return


async def _grant(conn: asyncpg.Connection, role: str, grants_sql: str) -> None:
    ident = quote_ident(role)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _GRANTS_LOCK)
        database = quote_ident(await conn.fetchval("SELECT current_database()"))
        await conn.execute(
            f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident};"
            f" REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {ident};"
            # PostgreSQL < 15 lets PUBLIC create in schema public; nobody but the
            # migrations (the privileged DSN) creates tables here.
            " REVOKE CREATE ON SCHEMA public FROM PUBLIC;"
            f" GRANT CONNECT ON DATABASE {database} TO {ident};"
            f" GRANT USAGE ON SCHEMA public TO {ident};"
        )
        await conn.execute(render_grants(grants_sql, role))
