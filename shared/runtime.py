"""Running a service: one asyncio loop with the HTTP server and background workers.

Several instances of one service may run side by side on one machine (issue 13:
``YIBAO_PAYMENT_INSTANCES`` and the others, deploy/stack.py): each binds the service's
port with ``SO_REUSEPORT`` (``listening_socket``) and the kernel spreads the incoming
connections over them, so callers keep one address. Everything else they share lives
in the database or in Kafka: the consumers join one group (the partitions split), and
every background worker claims its rows with ``FOR UPDATE SKIP LOCKED`` or a lease,
or holds an advisory lock (the outbox relay), so N copies do the work once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import asyncpg
import structlog
import uvicorn
from fastapi import FastAPI
from uvicorn.server import HANDLED_SIGNALS

from shared import polling
from shared.db import (
    GRANTS_FILE,
    RolesNotManaged,
    app_role_name,
    create_pool,
    ensure_app_role,
    ensure_database,
    is_transient_db_error,
    migrate,
)
from shared.fastloop import UVICORN_HTTP
from shared.logging import configure_logging
from shared.polling import FIRST_REST, LINGER, Pacing, Rest
from shared.settings import ServiceSettings
from shared.tracing import instrument_app, setup_tracing, shutdown_tracing

log = structlog.get_logger(__name__)

Worker = Callable[[], Awaitable[None]]

# What a worker's pass may fail with and simply be tried again: the database or the
# network (any PostgreSQL error, as the workers always did), or what
# ``is_transient_db_error`` recognises wrapped in another exception.
PASS_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class PollingWorker(ABC):
    """The one background-worker shape: ``run()`` calls ``run_once()`` until
    ``stop()``; a pass that fails on the database or the network is logged
    (``worker_pass_failed``, ``worker=name``) and tried again after ``poll_interval``.

    A worker with batches rests as ``Pacing`` says: none after a full batch, ``linger``
    after a pass that found work, and after empty passes from ``first_rest`` doubling
    up to ``poll_interval``, cut short by ``wake()`` or ``stop()``. A worker without
    batches (``batch_size`` None: a sweeper) rests ``poll_interval`` after every pass,
    or until ``wake()`` or ``stop()``. ``listen_to`` names the in-process wake-up
    channel (``shared.polling``) that wakes it while it runs, if any; ``any_due`` may
    answer cheaply whether a pass no wake-up asked for would find anything.
    """

    name: ClassVar[str] = "worker"
    listen_to: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        poll_interval: float,
        batch_size: int | None,
        linger: float = LINGER,
        first_rest: float = FIRST_REST,
    ) -> None:
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._pacing = Pacing(poll_interval, linger=linger, first_rest=first_rest)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    @abstractmethod
    async def run_once(self) -> int:
        """One pass; how many items it handled."""

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def wake(self, *_args: object) -> None:
        """End the current rest early (an in-process wake-up, ``shared.polling``)."""
        self._wake.set()

    async def any_due(self) -> bool | None:
        """A cheap look before a pass no wake-up asked for (after a linger or a quiet
        rest): False counts the pass as empty without running it. None (this default):
        no look, the pass runs."""
        return None

    async def run(self) -> None:
        if self.listen_to is not None:
            polling.listen(self.listen_to, self.wake)
        look_first = False
        try:
            while not self._stopping.is_set():
                # Cleared before the pass: a wake-up during it means work it may not
                # have seen, so the rest after it ends at once.
                self._wake.clear()
                try:
                    if look_first and await self.any_due() is False:
                        done = 0
                    else:
                        done = await self.run_once()
                    rest = self._rest_after(done)
                except Exception as exc:
                    if not (isinstance(exc, PASS_ERRORS) or is_transient_db_error(exc)):
                        raise
                    log.warning("worker_pass_failed", worker=self.name, error=repr(exc))
                    rest = Rest(self.poll_interval, wakeable=True)
                await self._rest(rest)
                # After a full batch or a wake-up the pass runs at once; otherwise the
                # worker may look first (``any_due``).
                look_first = rest.seconds > 0 and not self._wake.is_set()
        finally:
            if self.listen_to is not None:
                polling.unlisten(self.listen_to, self.wake)

    def _rest_after(self, done: int) -> Rest:
        if self.batch_size is None:
            return Rest(self.poll_interval, wakeable=True)
        return self._pacing.after(done, full=done >= self.batch_size)

    async def _rest(self, rest: Rest) -> None:
        if rest.seconds <= 0:
            return
        until = self._wake if rest.wakeable else self._stopping
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), rest.seconds)


class WorkerStates:
    """What ``serve`` knows of its workers, for ``/readyz`` (``app.state.workers``).

    A worker is ``running`` from its start, ``crashed`` from a crash until its restart
    (one restart delay later), and ``stopped`` once it has returned or been cancelled.
    """

    def __init__(self, names: Sequence[str] = ()) -> None:
        self._states: dict[str, str] = dict.fromkeys(names, "running")

    def set(self, name: str, state: str) -> None:
        self._states[name] = state

    def snapshot(self) -> dict[str, str]:
        return dict(self._states)

    def problems(self) -> dict[str, str]:
        """The workers that are not running, with their state (empty: all running)."""
        return {name: state for name, state in self._states.items() if state != "running"}


async def supervise(
    name: str,
    worker: Worker,
    *,
    restart_delay: float = 1.0,
    states: WorkerStates | None = None,
) -> None:
    """Run ``worker`` forever; if it crashes, log and start it again after a pause.
    ``states`` hears ``running``, ``crashed`` (during the pause) and ``stopped``."""
    states = states if states is not None else WorkerStates()
    try:
        while True:
            states.set(name, "running")
            try:
                await worker()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker_crashed", worker=name)
                states.set(name, "crashed")
                await asyncio.sleep(restart_delay)
            else:
                return
    finally:
        states.set(name, "stopped")


class _Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM or SIGINT only ends ``serve()``.

    uvicorn raises the signal again once the server has stopped, which ends the
    process there: ``serve`` never stopped its workers, so a consumer never left its
    group (the other instances waited out the session timeout before taking its
    partitions) and the composition root never closed its pool. Here the process ends
    when ``main`` returns, after both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def serve(
    app: FastAPI, *, host: str, port: int, workers: Sequence[tuple[str, Worker]] = ()
) -> None:
    """Serve ``app`` and run the workers beside it until the server is told to stop
    (SIGTERM or SIGINT), then stop the workers and return. Their states are on
    ``app.state.workers`` (a ``WorkerStates``) for ``/readyz``. With tracing on
    (``prepare_service``), every request gets a server span."""
    instrument_app(app)
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, http=UVICORN_HTTP
    )
    server = _Server(config)
    sock = listening_socket(host, port)
    states = WorkerStates([n for n, _ in workers])
    app.state.workers = states
    tasks = [asyncio.create_task(supervise(n, w, states=states), name=n) for n, w in workers]
    try:
        await server.serve(sockets=[sock])
    finally:
        # Cancelled mid-serve, uvicorn never closed its listeners: close them through
        # the loop first (which stops watching the socket), so a bare close cannot leave
        # the loop watching a file descriptor the next socket reuses.
        for listener in getattr(server, "servers", ()):
            listener.close()
        sock.close()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shutdown_tracing()


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound (uvicorn listens on it once the app has started, so
    no connection waits on an instance that is not ready yet).

    ``SO_REUSEPORT`` (where the platform has it): another instance of the same service,
    run by the same user, binds the same port and the kernel balances connections
    between them; with one instance nothing changes. A port held by anything that did
    not ask for sharing (any other program) still fails here, as ``address in use``.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        log.exception("port_unavailable", host=host, port=port)
        raise
    return sock


async def prepare_service(settings: ServiceSettings, migrations: Path) -> asyncpg.Pool:
    """What every service does first: logging, its own database (created when it is
    derived from DATABASE_URL), its migrations with that privileged DSN, then a pool
    that connects as the service's runtime role (``runtime_dsn``).

    Afterwards ``settings.database_url`` is the runtime DSN too, so whatever else the
    service connects with (the outbox relay's own connection)
    connects as the role and not with the migration DSN.

    Tracing (``shared.tracing``) starts last, once the migrations and the role's
    password are behind: on only when an exporter is configured (OTEL_* variables).
    """
    configure_logging(settings.service, level=settings.log_level, json=settings.log_json)
    if settings.dsn is None:
        await ensure_database(settings.admin_database_url, f"yibao_{settings.service}")
    await migrate(settings.database_url, migrations)
    settings.dsn = await runtime_dsn(settings, migrations / GRANTS_FILE)
    setup_tracing(settings.service)
    return await create_pool(settings.dsn)


async def runtime_dsn(
    settings: ServiceSettings, grants: Path, environ: Mapping[str, str] | None = None
) -> str:
    """The DSN the service runs with, once ``settings.database_url`` has migrated.

    * ``<PREFIX>APP_DSN`` (e.g. ``LEDGER_APP_DSN``) set: that, as given; the operator
      made the role and its grants (``grants.sql`` applies with ``psql -v role=…``).
    * otherwise the role ``yibao_<service>_app`` is created or updated and granted
      ``grants`` through the migration DSN, with the password from
      ``<PREFIX>DB_APP_PASSWORD`` or ``YIBAO_DB_APP_PASSWORD``, else a generated one
      (set again at every start: fine under trust authentication, as locally; give a
      password wherever several instances log in with one).
    * when the migration DSN cannot manage roles (not a superuser, no CREATEROLE, not
      the tables' owner), or there is no ``grants``: the migration DSN, with a warning.
    """
    env = os.environ if environ is None else environ
    prefix = str(type(settings).model_config.get("env_prefix", ""))
    given = env.get(f"{prefix}APP_DSN", "").strip()
    if given:
        log.info("db_runtime_role", source=f"{prefix}APP_DSN")
        return given
    grants_sql = _read_grants(grants)
    if grants_sql is None:
        log.warning("db_runtime_role_skipped", reason=f"no {grants}; connecting as migrated")
        return settings.database_url
    role = app_role_name(settings.service)
    password = env.get(f"{prefix}DB_APP_PASSWORD") or env.get("YIBAO_DB_APP_PASSWORD")
    if not password:
        password = secrets.token_urlsafe(24)
        if settings.environment != "development":
            log.warning(
                "db_runtime_role_password_generated",
                role=role,
                hint=f"set {prefix}DB_APP_PASSWORD (or YIBAO_DB_APP_PASSWORD) when the"
                " server checks passwords: each start sets a new one",
            )
    try:
        dsn = await ensure_app_role(settings.database_url, role, password, grants_sql)
    except RolesNotManaged as exc:
        log.warning("db_runtime_role_skipped", role=role, reason=str(exc))
        return settings.database_url
    log.info("db_runtime_role", role=role, grants=str(grants))
    return dsn


def _read_grants(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None
