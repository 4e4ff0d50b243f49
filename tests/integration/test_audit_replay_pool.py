"""``yibao-audit replay`` from Kafka through its worker pool (issue 13): a signed journal
on real topics gives the same report, finding for finding, whether its hashes,
signatures and payments are checked by two worker processes or in the one process."""

from __future__ import annotations

import pytest

from services.ledger.audit.rules import Auditor
from services.ledger.audit.run import Progress, replay_kafka
from services.ledger.audit.synthetic import SyntheticJournal
from shared.events import encode
from shared.outbox import make_producer
from shared.topics import TopicNames
from tests.support import Infra
from tests.unit.test_audit_checks import KEYS, SIGNER
from tests.unit.test_audit_verify import assert_same

pytestmark = pytest.mark.integration


async def test_the_pool_replays_kafka_exactly_as_one_process(
    infra: Infra, kafka_topics: TopicNames
) -> None:
    journal = SyntheticJournal(KEYS, payers=6, seed=13, signed=True, money_from_outside=True)
    producer = make_producer(infra.kafka_bootstrap)
    await producer.start()
    try:
        for stream, env in journal.events(120):
            topic = kafka_topics.ledger if stream == "ledger" else kafka_topics.payments
            await producer.send_and_wait(topic, value=encode(env), key=env.key.encode())
    finally:
        await producer.stop()

    async def replay(**kw: int) -> Auditor:
        auditor = Auditor(public_key=SIGNER.public_raw)
        await replay_kafka(auditor, infra.kafka_bootstrap, kafka_topics, Progress(every=0), **kw)
        auditor.finish()
        return auditor

    pooled = await replay(workers=2, batch=16)
    assert pooled.findings.total == 0
    assert pooled.counts.entries > 0 and pooled.counts.successes > 0
    assert pooled.payments_read
    assert_same(pooled, await replay(batch=100_000))
