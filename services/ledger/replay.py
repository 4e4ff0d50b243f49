"""Reading the ledger's event store (the ledger.v1 topic) from offset 0.

Used by rebuilds and audits: no consumer group, nothing committed, reads up to the
end offsets seen at the start and returns the decoded events in topic order.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared.events import Event, decode

LEDGER_EVENT_TYPES = frozenset({"JournalEntryPosted", "ReceiptIssued", "PostingRejected"})


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
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


async def read_topic(bootstrap: str, topic: str, *, within: float = 30.0) -> list[Event]:
    """Every event on ``topic`` up to its current end, partition by partition in order."""
    partitions = await _partitions(bootstrap, topic)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        events: dict[TopicPartition, list[Event]] = {tp: [] for tp in tps}

        async def drain() -> None:
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                batch = await consumer.getmany(*tps, timeout_ms=500)
                for tp, records in batch.items():
                    events[tp].extend(
                        decode(r.value) for r in records if r.offset < ends[tp]
                    )

        await asyncio.wait_for(drain(), within)
        return [e for tp in tps for e in events[tp]]
    finally:
        await consumer.stop()
