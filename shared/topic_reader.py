"""Reading a topic from offset 0: the ledger's event store, payments, dead letters.

Used by the ledger's rebuilds, audits and exports and by the dead-letter tool: no
consumer group, nothing committed; reads up to the end offsets seen at the start,
partition by partition, each in offset order. It reads as this process's Kafka
principal (``shared.kafka.client_options``): the read-only one is enough.
``stream_topic`` yields raw records as they come (constant memory for long logs);
``read_topic`` decodes them all into a list.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import Event, decode
from shared.kafka import client_options


@dataclass(frozen=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def topic_partitions(bootstrap: str, topic: str) -> list[int]:
    """The topic's partitions; empty when the topic does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(
        p["partition"]
        for t in described
        if t.get("error_code", 0) == 0
        for p in t.get("partitions") or []
    )


async def stream_topic(
    bootstrap: str, topic: str, *, idle_timeout: float = 30.0
) -> AsyncIterator[RawRecord]:
    """Every record on ``topic`` up to its end offsets at the start, in order.

    Raises ``TimeoutError`` when the broker delivers nothing for ``idle_timeout`` s
    while records are still expected.
    """
    partitions = await topic_partitions(bootstrap, topic)
    if not partitions:
        return
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **client_options(),
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            loop = asyncio.get_running_loop()
            last_progress = loop.time()
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
                records = [r for r in batch.get(tp, []) if r.offset < ends[tp]]
                if not records:
                    if loop.time() - last_progress > idle_timeout:
                        raise TimeoutError(
                            f"{topic}[{tp.partition}]: no records for {idle_timeout:.0f} s "
                            f"before offset {ends[tp]}"
                        )
                    continue
                last_progress = loop.time()
                for r in records:
                    yield RawRecord(topic, tp.partition, r.offset, r.key, r.value)
    finally:
        await consumer.stop()


async def read_topic(bootstrap: str, topic: str, *, within: float = 30.0) -> list[Event]:
    """Every event on ``topic`` up to its current end, partition by partition in order."""

    async def collect() -> list[Event]:
        return [decode(r.value) async for r in stream_topic(bootstrap, topic)]

    return await asyncio.wait_for(collect(), within)
