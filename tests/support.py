"""Test helpers that are not fixtures: finding infrastructure, fresh databases, topics,
Kafka credentials and per-test principals.

Importable from any test as ``from tests.support import ...``.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import uvicorn
from aiokafka.admin import AIOKafkaAdminClient

from deploy import common, kafka_access, local_kafka, procs
from deploy import topics as deploy_topics
from shared.kafka import admin_options
from shared.topics import ALL_TOPICS, TopicSpec

T = TypeVar("T")


@dataclass(frozen=True)
class Infra:
    """Addresses of the real Kafka and PostgreSQL the tests use.

    ``database_url`` is a superuser DSN (``postgresql://...``) usable by asyncpg.
    """

    kafka_bootstrap: str
    database_url: str


@dataclass
class _Made:
    """What this test session made on the shared servers; removed when the session ends
    (``remove_what_was_made``), so a long-lived local broker and cluster do not collect
    thousands of test topics and databases."""

    topic_prefixes: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    databases: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    principals: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))


MADE = _Made()  # bootstrap -> topic prefixes, principals; admin DSN -> database names


def use_kafka_credentials(values: Mapping[str, str]) -> bool:
    """Take the broker's security settings (stack.env's Kafka names, from ``values``)
    into this test process's environment, acting as the admin principal: test tooling
    and the services run in-process are then the admin, and subprocesses inherit it.
    Returns whether the broker authenticates (False: an open broker, nothing set)."""
    admin = common.kafka_admin_env(values)
    os.environ.update(admin)
    return bool(admin)


def kafka_authenticates() -> bool:
    """True when the tests' broker takes SASL credentials (``use_kafka_credentials``)."""
    return bool(os.environ.get("KAFKA_ADMIN_USERNAME"))


async def create_service_principals(bootstrap: str, prefix: str) -> dict[str, str]:
    """A principal per service for the topics under ``prefix`` (SCRAM credentials and
    the ACLs of deploy/kafka_access.py, on the literal prefixed names); removed when
    the session ends. Returns ``KAFKA_<SERVICE>_USERNAME`` / ``_PASSWORD`` for
    ``start_services`` (each process gets only its own). ``{}`` on an open broker."""
    if not kafka_authenticates():
        return {}
    env: dict[str, str] = {}
    passwords: dict[str, str] = {}
    acls: list[kafka_access.Acl] = []
    for access in kafka_access.SERVICE_ACCESS:
        username = f"{prefix.rstrip('.')}-{access.service}"
        passwords[username] = secrets.token_urlsafe(24)
        acls += kafka_access.service_acls(access, username, prefix)
        env[common.kafka_username_key(access.service)] = username
        env[common.kafka_password_key(access.service)] = passwords[username]
    MADE.principals[bootstrap].update(passwords)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=30000, **admin_options()
    )
    await admin.start()
    try:
        await kafka_access.upsert_users(admin, passwords)
        await kafka_access.create_acls(admin, acls)
    finally:
        await admin.close()
    await kafka_access.wait_for_logins(bootstrap, passwords)
    return env


async def remove_what_was_made() -> list[str]:
    """Delete the prefixed topics and drop the databases this session created; returns
    what could not be removed (a test session is not failed over its clean-up)."""
    problems: list[str] = []
    for bootstrap in set(MADE.topic_prefixes) | set(MADE.principals):
        prefixes = MADE.topic_prefixes.get(bootstrap, set())
        principals = sorted(MADE.principals.get(bootstrap, set()))
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=30000, **admin_options()
        )
        try:
            await admin.start()
            if prefixes:
                topics = await admin.list_topics()
                doomed = sorted(t for t in topics if t.startswith(tuple(prefixes)))
                for i in range(0, len(doomed), 200):
                    await admin.delete_topics(doomed[i : i + 200])
            if principals:
                await kafka_access.delete_acls(admin, [kafka_access.user(p) for p in principals])
                await kafka_access.delete_users(admin, principals)
        except Exception as exc:
            problems.append(f"topics or principals on {bootstrap}: {exc!r}")
        finally:
            await admin.close()
    for dsn, names in MADE.databases.items():
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            problems.append(f"databases: {exc!r}")
            continue
        try:
            for name in sorted(names):
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                except asyncpg.PostgresError as exc:
                    problems.append(f"database {name}: {exc!r}")
        finally:
            await conn.close()
    MADE.topic_prefixes.clear()
    MADE.databases.clear()
    MADE.principals.clear()
    return problems


async def eventually(
    check: Callable[[], Awaitable[T | None] | T | None], within: float = 60.0
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; return that.
    Fails the test after ``within`` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"not so within {within} s"
        await asyncio.sleep(0.1)


def random_prefix() -> str:
    """A fresh topic namespace such as ``t1a2b3c4d.``."""
    return f"t{secrets.token_hex(4)}."


def with_database(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` instead."""
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


async def create_topics(
    bootstrap: str, prefix: str, topics: Iterable[TopicSpec] = ALL_TOPICS
) -> list[str]:
    """Create the contract's topics under ``prefix`` (idempotent); returns their names.
    Prefixed topics are deleted when the test session ends."""
    if prefix:
        MADE.topic_prefixes[bootstrap].add(prefix)
    return await deploy_topics.create_topics(bootstrap, prefix, topics)


async def create_database(admin_dsn: str, name: str | None = None) -> str:
    """Create a database (default name ``t_<hex>``) and return its DSN; it is dropped
    when the test session ends."""
    name = name or f"t_{secrets.token_hex(6)}"
    MADE.databases[admin_dsn].add(name)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name)


async def ensure_databases(admin_dsn: str, names: Iterable[str]) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        existing = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def postgres_answers(dsn: str, connect_timeout: float = 5.0) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1") == 1)
    finally:
        await conn.close()


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def docker_available(timeout: float = 5.0) -> bool:
    """True when a Docker engine answers ``docker info`` quickly."""
    if os.environ.get("YIBAO_NO_DOCKER"):
        return False
    if not shutil.which("docker"):
        return False
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],  # noqa: S607
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())


# ------------------------------------------------------------------ Docker path
#
# The project's own images (``make images``: deploy/build_images.py), never pulled: on
# an engine that cannot reach a registry the tests must not try. Host networking, on
# free ports of 127.0.0.1 (YIBAO_CONTAINER_KAFKA_PORT / YIBAO_CONTAINER_PG_PORT pin
# them), so they never collide with ``make up`` (59092, 55432). Ryuk, testcontainers'
# reaper, is an image from a registry: disabled; the containers are removed by the
# ExitStack that holds them (even when a test fails) and, should the test process be
# killed, by the next session (``remove_orphan_containers``, by their owner's pid).

CONTAINER_LABEL = "org.yibao.tests"
OWNER_LABEL = "org.yibao.owner-pid"
# The infra containers of this session ("kafka", "postgres"): testcontainers objects,
# for tests that kill and restart them (tests/containers).
INFRA_CONTAINERS: dict[str, Any] = {}


def _broker_container() -> Any | None:
    """The Kafka container of this session (docker SDK object), or None."""
    kafka = INFRA_CONTAINERS.get("kafka")
    return None if kafka is None else kafka.get_wrapped_container()


def _local_broker_pid() -> int | None:
    return local_kafka.kafka_running_pid(common.layout())


_NOT_OURS = (
    "this test stops the broker, so it needs one this session may stop: the local one from"
    " deploy/stack.py or the session's Kafka container; the broker in use is neither"
)


@asynccontextmanager
async def broker_frozen(infra: Infra) -> AsyncIterator[None]:
    """Inside the block the broker stops answering while its connections stay open
    (SIGSTOP to the local stack's JVM, or the session's Kafka container paused: the
    same freezer); it answers again after."""
    container = _broker_container()
    pid = None if container is not None else _local_broker_pid()
    if container is not None:
        container.pause()
    elif pid is not None:
        os.kill(pid, signal.SIGSTOP)
    else:
        raise AssertionError(_NOT_OURS)
    try:
        yield
    finally:
        if container is not None:
            container.unpause()
        elif pid is not None:
            os.kill(pid, signal.SIGCONT)


@asynccontextmanager
async def broker_stopped(infra: Infra) -> AsyncIterator[None]:
    """Inside the block the broker is down (the local stack's JVM stopped, or the
    session's Kafka container killed); after it, started again and answering."""
    container = _broker_container()
    if container is None and _local_broker_pid() is None:
        raise AssertionError(_NOT_OURS)
    lay = common.layout()
    if container is not None:
        await asyncio.to_thread(container.kill)
        await asyncio.to_thread(container.wait, timeout=30)
    else:
        procs.stop_process(lay.kafka_pidfile, expect=local_kafka.kafka_marker(lay))
    try:
        yield
    finally:
        if container is not None:
            await asyncio.to_thread(container.start)
        else:
            await asyncio.to_thread(local_kafka.ensure_kafka, lay, common.Started())
        deadline = time.monotonic() + 120
        while not await asyncio.to_thread(local_kafka.kafka_healthy, infra.kafka_bootstrap, 3):
            if time.monotonic() > deadline:
                raise AssertionError("the broker did not come back within 120 s")
            await asyncio.sleep(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve the ASGI ``app`` with uvicorn on a free port of 127.0.0.1 in this event
    loop: its base URL while inside, stopped after."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def project_image(name: str) -> str | None:
    """``yibao/<name>:<hash of today's inputs>`` when that image is on the engine, else
    None (not built, or built from other inputs: ``make images`` builds it)."""
    from deploy import build_images

    try:
        ref = build_images.current_ref(name)
    except common.StackError:
        return None
    return ref if ref and build_images.image_exists(ref) else None


def remove_orphan_containers() -> None:
    """Remove test containers whose test process is gone (killed before clean-up)."""
    proc = subprocess.run(
        [  # noqa: S607
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label={CONTAINER_LABEL}",
            "--format",
            f'{{{{.ID}}}} {{{{.Label "{OWNER_LABEL}"}}}}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    for line in proc.stdout.splitlines():
        cid, _, owner = line.partition(" ")
        if owner.isdigit() and procs.pid_alive(int(owner)):
            continue
        subprocess.run(
            ["docker", "rm", "-f", "-v", cid],  # noqa: S607
            capture_output=True,
            timeout=60,
            check=False,
        )


def project_container(
    image: str, env: Mapping[str, str], role: str | None = None, **kwargs: Any
) -> Any:
    """A testcontainers container of a project image on the host's network, named
    ``yibao-test-<pid>-<role>-<hex>`` (``docker ps`` tells whose it is)."""
    from testcontainers.core.container import DockerContainer

    role = role or image.split("/")[-1].split(":")[0]
    return DockerContainer(
        image,
        env=dict(env),
        name=f"yibao-test-{os.getpid()}-{role}-{secrets.token_hex(2)}",
        network_mode="host",
        labels={CONTAINER_LABEL: "1", OWNER_LABEL: str(os.getpid())},
        **kwargs,
    )


def _wait(check: Callable[[], bool], container: Any, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            logs = container.get_wrapped_container().logs(tail=30).decode(errors="replace")
            raise common.StackError(f"{what} did not answer within {within:.0f}s:\n{logs}")
        time.sleep(0.5)


def start_project_infra(stack: ExitStack) -> Infra | None:
    """Kafka (SASL/SCRAM + ACLs, as the local broker) and PostgreSQL in containers of
    the project's images; None when an image is missing (the caller falls back to the
    local bring-up). The tests act as the broker's admin (``use_kafka_credentials``);
    the read-only principal exists with its ACLs, as on the local stack."""
    kafka_image, pg_image = project_image("kafka"), project_image("postgres")
    if kafka_image is None or pg_image is None:
        return None
    remove_orphan_containers()
    secrets_values = common.generate_secrets()
    kafka_port = int(os.environ.get("YIBAO_CONTAINER_KAFKA_PORT") or free_port())
    controller_port = free_port()
    pg_port = int(os.environ.get("YIBAO_CONTAINER_PG_PORT") or free_port())
    pg_password = secrets.token_urlsafe(18)
    kafka = stack.enter_context(
        project_container(
            kafka_image,
            {
                "KAFKA_PORT": str(kafka_port),
                "KAFKA_CONTROLLER_PORT": str(controller_port),
                "KAFKA_ADMIN_PASSWORD": secrets_values["KAFKA_ADMIN_PASSWORD"],
                "KAFKA_CONTROLLER_PASSWORD": secrets_values["KAFKA_CONTROLLER_PASSWORD"],
            },
        )
    )
    pg = stack.enter_context(
        project_container(
            pg_image,
            {
                "PGPORT": str(pg_port),
                "POSTGRES_PASSWORD": pg_password,
                # As the local bring-up's loopback cluster, which the tests of runtime
                # roles expect (tests/integration/test_db_roles.py).
                "PG_HOST_AUTH": "trust",
                "POSTGRES_DATABASES": ",".join(common.DATABASES),
            },
        )
    )
    INFRA_CONTAINERS.update(kafka=kafka, postgres=pg)
    stack.callback(INFRA_CONTAINERS.clear)
    bootstrap = f"127.0.0.1:{kafka_port}"
    dsn = f"postgresql://postgres:{pg_password}@127.0.0.1:{pg_port}/postgres"
    admin = local_kafka.Credentials(
        common.KAFKA_ADMIN_USERNAME, secrets_values["KAFKA_ADMIN_PASSWORD"]
    )
    _wait(lambda: local_kafka.kafka_healthy(bootstrap, 3, admin), kafka, "Kafka", 120)
    _wait(lambda: run_sync(postgres_answers(dsn)), pg, "PostgreSQL", 60)
    use_kafka_credentials(common.kafka_stack_env(secrets_values))
    reader = {common.KAFKA_READER_USERNAME: secrets_values["KAFKA_SASL_PASSWORD"]}
    run_sync(_grant(bootstrap, reader))
    return Infra(bootstrap, dsn)


async def _grant(bootstrap: str, passwords: Mapping[str, str]) -> None:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=30000, **admin_options()
    )
    await admin.start()
    try:
        await kafka_access.grant_standard_access(admin, bootstrap, passwords)
    finally:
        await admin.close()
