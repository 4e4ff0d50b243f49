"""What an audit finds: discrepancies, where they sit in the log, and the checks.

Pure data. A ``Discrepancy`` names the events behind it (journal seq, event id,
payment id) and where the message sits (topic / partition / offset, and the line of
an export file), so a person can go and look.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Where:
    """A message's place: in Kafka, and in an export file when replayed from one."""

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    line: int | None = None  # 1-based line of the export file

    def __str__(self) -> str:
        parts = []
        if self.topic is not None:
            parts.append(f"{self.topic}[{self.partition}]@{self.offset}")
        if self.line is not None:
            parts.append(f"line {self.line}")
        return " ".join(parts) or "-"

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "line": self.line,
        }


@dataclass(frozen=True, slots=True)
class Discrepancy:
    kind: str
    message: str
    seq: int | None = None
    event_id: str | None = None
    payment_id: str | None = None
    where: Where | None = None
    related: tuple[Where, ...] = ()  # other messages involved (a payment's success, say)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "seq": self.seq,
            "event_id": self.event_id,
            "payment_id": self.payment_id,
            "where": self.where.to_json() if self.where else None,
            "related": [w.to_json() for w in self.related],
        }


# The audit rules a report states (one ``[ ok ]``/``[FAIL]`` line each; "checks" in the
# report's JSON), and the discrepancy kinds that break each one.
RULES: tuple[tuple[str, str, frozenset[str]], ...] = (
    (
        "export",
        "export file: SHA-256 and manifest signature",
        frozenset({"manifest_sha256", "manifest_signature", "manifest_counts"}),
    ),
    ("readable", "every message decodes as a known event", frozenset({"undecodable"})),
    ("balanced", "every journal transaction balances to zero", frozenset({"unbalanced"})),
    (
        "non_negative",
        "no wallet or personal medical account goes negative",
        frozenset({"negative_balance"}),
    ),
    (
        "chain",
        "hash chain intact: seq gapless, prev_hash links, hashes recompute",
        frozenset(
            {
                "seq_gap",
                "seq_fork",
                "chain_link",
                "hash_mismatch",
                "double_posting",
                "duplicate_mismatch",
            }
        ),
    ),
    (
        "entry_signatures",
        "every journal entry since signing began is signed by the trusted key",
        frozenset({"entry_signature"}),
    ),
    (
        "checkpoints",
        "the journal reaches every signed checkpoint (given, and in each closed day) with "
        "exactly its hash",
        frozenset({"checkpoint_unreached", "checkpoint_mismatch", "checkpoint_signature"}),
    ),
    (
        "signatures",
        "every receipt signature verifies with the trusted key",
        frozenset({"receipt_signature"}),
    ),
    (
        "receipt_numbers",
        "receipt numbers gapless per code",
        frozenset({"receipt_number_gap", "receipt_conflict"}),
    ),
    (
        "receipts_match",
        "every receipt matches its journal entry, every entry's receipt exists",
        frozenset({"receipt_mismatch", "receipt_missing", "receipt_without_entry"}),
    ),
    (
        "payments",
        "each PaymentSucceeded has exactly one journal transaction of its amount, "
        "and each transaction a PaymentSucceeded",
        frozenset(
            {
                "payment_not_posted",
                "posting_without_payment",
                "payment_mismatch",
                "duplicate_success",
            }
        ),
    ),
    (
        "refunds",
        "each refund entry has its RefundSucceeded (amount, journal seq) and the refunds of a "
        "payment never exceed it; each red receipt reverses an existing original",
        frozenset(
            {
                "refund_not_succeeded",
                "refund_not_posted",
                "refund_mismatch",
                "refund_exceeds_payment",
                "refund_without_payment",
                "red_receipt_orphan",
            }
        ),
    ),
    (
        "allocations",
        "each allocation entry matches its MedicalAccountAllocated (allocation id, amount)",
        frozenset({"allocation_not_posted", "allocation_without_event", "allocation_mismatch"}),
    ),
    (
        "settlement",
        "every closed day's figures recompute from its entries and carried deficits; every "
        "transfer is one settlement entry and at most one arrival of the same amount",
        frozenset({"clearing_day_mismatch", "settlement_mismatch", "posting_after_close"}),
    ),
    (
        "reconciliations",
        "every bank reconciliation's outcome recomputes from its statement and the journal",
        frozenset({"reconciliation_mismatch"}),
    ),
    (
        "live",
        "live projection equals the rebuilt one",
        frozenset({"live_head", "live_balance", "live_receipt", "live_statement"}),
    ),
)


def rule_order(kind: str) -> int:
    """Position of the kind's rule in ``RULES`` (report order)."""
    for i, (_name, _title, kinds) in enumerate(RULES):
        if kind in kinds:
            return i
    return len(RULES)


def rule_of(kind: str) -> str:
    for name, _title, kinds in RULES:
        if kind in kinds:
            return name
    return "other"


@dataclass
class Findings:
    """Discrepancies collected, at most ``max_per_kind`` kept per kind (all counted)."""

    max_per_kind: int = 1000
    kept: list[Discrepancy] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, d: Discrepancy) -> None:
        n = self.counts.get(d.kind, 0)
        self.counts[d.kind] = n + 1
        if n < self.max_per_kind:
            self.kept.append(d)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_rule(self) -> Mapping[str, int]:
        out: dict[str, int] = {}
        for kind, n in self.counts.items():
            out[rule_of(kind)] = out.get(rule_of(kind), 0) + n
        return out
