"""The infrastructure itself: real Kafka and PostgreSQL behave as the services rely on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy import common, local_kafka, procs, stack
from shared.kafka import client_options
from shared.topics import ALL_TOPICS, DAY_MS, TopicSpec
from tests.support import Infra, create_topics, eventually, postgres_answers

pytestmark = pytest.mark.integration

WAIT = 30.0


async def test_contract_topics_exist(infra: Infra, topic_prefix: str) -> None:
    names = await create_topics(infra.kafka_bootstrap, topic_prefix)
    assert names == [topic_prefix + t.name for t in ALL_TOPICS]
    # Creating them again is fine (idempotent).
    assert await create_topics(infra.kafka_bootstrap, topic_prefix) == names


async def _retention(bootstrap: str, topics: list[str]) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [
                ConfigResource(ConfigResourceType.TOPIC, t, configs={"retention.ms": None})
                for t in topics
            ]
        )
    finally:
        await admin.close()
    found = {}
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:
                if entry[0] == "retention.ms":
                    found[resource[3]] = entry[1]
    return found


async def test_the_journal_and_payments_are_kept_forever(infra: Infra, topic_prefix: str) -> None:
    ledger, payments, risk = (topic_prefix + n for n in ("ledger.v1", "payments.v1", "risk.v1"))
    # A stack made before retention was set: the journal topic exists with the broker's
    # default (a week). Creating the contract's topics gives it its retention anyway.
    await create_topics(infra.kafka_bootstrap, topic_prefix, [TopicSpec("ledger.v1", 1, ())])
    assert (await _retention(infra.kafka_bootstrap, [ledger]))[ledger] == str(7 * DAY_MS)

    await create_topics(infra.kafka_bootstrap, topic_prefix)
    wanted = {
        ledger: "-1",
        payments: "-1",
        risk: str(7 * DAY_MS),
        ledger + ".dlq": str(30 * DAY_MS),
    }

    async def settled() -> dict[str, str] | None:
        # A config change reaches the broker's metadata a moment after it is made.
        kept = await _retention(infra.kafka_bootstrap, list(wanted))
        return kept if kept == wanted else None

    assert await eventually(settled, within=WAIT) == wanted


async def test_produce_consume_commit_and_resume(infra: Infra, topic_prefix: str) -> None:
    (topic,) = await create_topics(
        infra.kafka_bootstrap, topic_prefix, [TopicSpec("infra-check.v1", 1)]
    )
    tp = TopicPartition(topic, 0)
    group = f"{topic_prefix}group"

    producer = AIOKafkaProducer(
        bootstrap_servers=infra.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        **client_options(),
    )
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(topic, key=b"payer-1", value=f"m{i}".encode())
            for i in range(5)
        ]
    finally:
        await producer.stop()
    assert [m.offset for m in sent] == [0, 1, 2, 3, 4]

    def consumer() -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.kafka_bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **client_options(),
        )

    first = consumer()
    await first.start()
    try:
        got = [await asyncio.wait_for(first.getone(), WAIT) for _ in range(3)]
        assert [(m.offset, m.key, m.value) for m in got] == [
            (0, b"payer-1", b"m0"),
            (1, b"payer-1", b"m1"),
            (2, b"payer-1", b"m2"),
        ]
        # Commit only what was processed: the next offset to read is 3.
        await first.commit({tp: got[-1].offset + 1})
        assert await first.committed(tp) == 3
    finally:
        await first.stop()

    second = consumer()
    await second.start()
    try:
        rest = [await asyncio.wait_for(second.getone(), WAIT) for _ in range(2)]
        assert [(m.offset, m.value) for m in rest] == [(3, b"m3"), (4, b"m4")]
        await second.commit()
        assert await second.committed(tp) == 5
    finally:
        await second.stop()


async def test_postgres_fresh_database(
    infra: Infra, new_database: Callable[..., Awaitable[str]]
) -> None:
    dsn = await new_database()
    assert dsn.startswith("postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)")
        async with conn.transaction():
            await conn.executemany("INSERT INTO t VALUES ($1, $2)", [(1, "一"), (2, "two")])

        async def insert_with_duplicate() -> None:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (3, 'three')")
                await conn.execute("INSERT INTO t VALUES (1, 'again')")

        # The failed transaction leaves nothing behind, not even its first row.
        with pytest.raises(asyncpg.UniqueViolationError):
            await insert_with_duplicate()
        rows = await conn.fetch("SELECT id, note FROM t ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "一"), (2, "two")]
    finally:
        await conn.close()


async def test_service_databases_exist(infra: Infra) -> None:
    conn = await asyncpg.connect(infra.database_url)
    try:
        names = {r["datname"] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()
    assert set(common.DATABASES) <= names


def _kafka_answers(bootstrap: str) -> bool:
    return local_kafka.kafka_healthy(bootstrap, timeout=10)


async def test_stack_env_is_written_and_answers(
    infra: Infra, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = (infra.kafka_bootstrap, infra.database_url) == (
        common.DEFAULT_KAFKA_BOOTSTRAP,
        common.DEFAULT_DATABASE_URL,
    )
    if local:
        # The local bring-up: ensure-infra is idempotent and (re)writes .run/stack.env.
        repo = common.REPO
    else:
        # Servers from the environment or containers: manage a scratch checkout layout
        # pointed at them, so the real .run/stack.env is left alone.
        repo = tmp_path
        monkeypatch.setenv("KAFKA_BOOTSTRAP", infra.kafka_bootstrap)
        monkeypatch.setenv("DATABASE_URL", infra.database_url)
    info = await asyncio.to_thread(stack.ensure_infra, repo)
    env = common.read_env_file(common.layout(repo).stack_env)
    expected_keys = {
        "KAFKA_BOOTSTRAP", "DATABASE_URL", "PAYMENT_URL", "LEDGER_URL", "RISK_URL",
        "NOTIFY_URL", "SMS_GATEWAY_URL", "API_KEY",
    }  # fmt: skip
    assert expected_keys <= env.keys()
    assert env["KAFKA_BOOTSTRAP"] == info.kafka_bootstrap == infra.kafka_bootstrap
    assert env["DATABASE_URL"] == info.database_url == infra.database_url
    assert env["PAYMENT_URL"] == "http://127.0.0.1:8001"
    assert env["API_KEY"].startswith("yb_dev_")
    assert await asyncio.to_thread(_kafka_answers, env["KAFKA_BOOTSTRAP"])
    assert await postgres_answers(env["DATABASE_URL"])
    secrets_file = common.layout(repo).secrets_env
    assert secrets_file.stat().st_mode & 0o077 == 0
    assert common.read_env_file(secrets_file)["API_KEY"] == env["API_KEY"]


def test_port_owner_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not procs.port_free(port)
        message = str(procs.port_taken_error(port, "Kafka"))
        assert f"port {port}" in message
        assert "python" in message.lower()
        # Not a yibao stack of another checkout: never taken over, even in CI.
        assert procs.other_stack_pid(port, "Kafka") is None
    assert procs.port_free(port)
