"""The Kafka topics of the event contract (DESIGN.md "Contract: events").

Payment and risk events are keyed by payer_id and spread over several partitions;
the ledger journal is one partition so that its order is the journal's order.

Retention is part of the contract: ``ledger.v1`` is the ledger's event store and
``payments.v1`` the record auditors match it against, so both are kept forever
(Kafka's default would delete them after a week). Working topics keep a week, dead
letters a month, long enough for an operator to look.

Size is too: every topic takes an event of up to ``MAX_EVENT_BYTES`` (a bank
statement's reconciliation carries the statement, up to 20 MiB), the producers allow
it (``shared.outbox.make_producer``) and ``write_outbox`` refuses a larger one before
it is staged, so no row can wait in an outbox for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

PAYMENTS = "payments.v1"
RISK = "risk.v1"
LEDGER = "ledger.v1"
NOTIFY = "notify.v1"
PERSON_KEYS = "person-keys.v1"


MAX_EVENT_BYTES = 32 * 1024 * 1024  # an event's encoded envelope, at most
# What a message may take beyond its value: the record batch, the key, the headers
# (CloudEvents attributes, traceparent, a dead letter's reasons).
MESSAGE_ROOM = 64 * 1024
MESSAGE_BYTES = MAX_EVENT_BYTES + MESSAGE_ROOM
_SIZED: tuple[tuple[str, str], ...] = (("max.message.bytes", str(MESSAGE_BYTES)),)

DAY_MS = 24 * 3600 * 1000
KEEP_FOREVER: tuple[tuple[str, str], ...] = (
    ("retention.ms", "-1"),
    ("retention.bytes", "-1"),
    *_SIZED,
)
KEEP_A_WEEK: tuple[tuple[str, str], ...] = (("retention.ms", str(7 * DAY_MS)), *_SIZED)
KEEP_A_MONTH: tuple[tuple[str, str], ...] = (("retention.ms", str(30 * DAY_MS)), *_SIZED)
# Person keys (issue 11): the last record per key id is kept; erasure's record replaces
# the key, and segments roll hourly so the cleaner can drop the key within about a day.
COMPACTED: tuple[tuple[str, str], ...] = (
    ("cleanup.policy", "compact"),
    ("segment.ms", str(3600 * 1000)),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("max.compaction.lag.ms", str(DAY_MS)),
    *_SIZED,
)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: tuple[tuple[str, str], ...] = KEEP_A_WEEK  # topic-level Kafka configs


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


MAIN_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(PAYMENTS, 6, KEEP_FOREVER),
    TopicSpec(RISK, 6, KEEP_A_WEEK),
    TopicSpec(LEDGER, 1, KEEP_FOREVER),
    TopicSpec(NOTIFY, 3, KEEP_A_WEEK),
    TopicSpec(PERSON_KEYS, 1, COMPACTED),
)

ALL_TOPICS: tuple[TopicSpec, ...] = MAIN_TOPICS + tuple(
    TopicSpec(dlq(t.name), 1, KEEP_A_MONTH) for t in MAIN_TOPICS
)


def named(prefix: str, topic: str) -> str:
    """A topic name inside a namespace (tests run each stack under its own prefix)."""
    return f"{prefix}{topic}"


@dataclass(frozen=True)
class TopicNames:
    """The contract's topic names under a namespace prefix ('' in production)."""

    prefix: str = ""

    @property
    def payments(self) -> str:
        return self.prefix + PAYMENTS

    @property
    def risk(self) -> str:
        return self.prefix + RISK

    @property
    def ledger(self) -> str:
        return self.prefix + LEDGER

    @property
    def notify(self) -> str:
        return self.prefix + NOTIFY

    @property
    def person_keys(self) -> str:
        return self.prefix + PERSON_KEYS
