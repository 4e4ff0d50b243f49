"""The Kafka topics of the event contract (DESIGN.md "Contract: events").

Payment and risk events are keyed by payer_id and spread over several partitions;
the ledger journal is one partition so that its order is the journal's order.
"""

from __future__ import annotations

from dataclasses import dataclass

PAYMENTS = "payments.v1"
RISK = "risk.v1"
LEDGER = "ledger.v1"
NOTIFY = "notify.v1"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int


def dlq(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}.dlq"


MAIN_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(PAYMENTS, 6),
    TopicSpec(RISK, 6),
    TopicSpec(LEDGER, 1),
    TopicSpec(NOTIFY, 3),
)

ALL_TOPICS: tuple[TopicSpec, ...] = MAIN_TOPICS + tuple(
    TopicSpec(dlq(t.name), 1) for t in MAIN_TOPICS
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
