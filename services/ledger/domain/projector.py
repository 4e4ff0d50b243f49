"""The one projector: JournalEntryPosted and ReceiptIssued → head, balances, receipts.

``entry_changes`` and ``receipt_row`` say what an event changes; ``project`` applies
that to an in-memory ``LedgerState`` (tests, the audit replay) and
``services.ledger.store`` applies the very same changes to tables (live posting and
``rebuild_projections``). Everything comes from the event: no clock, no consumption
order beyond the journal's own sequence. ``project`` dispatches on the event type
(``functools.singledispatch``): one registered function per event; every entry kind
(premium, top-up, refund, allocation) folds the same way, through its lines.

The chain is checked as it is folded: an entry must follow the head (seq + 1, the
head's hash as ``prev_hash``) and its hash must be right; an entry already folded
(seq at or below the head, as a republished message is) changes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from services.ledger.domain.chain import LedgerHead, hash_of
from shared.errors import YibaoError
from shared.events import EventPayload, JournalEntryPosted, ReceiptIssued


class ChainBroken(YibaoError):
    """The journal does not link: an entry is missing, reordered, forked or altered."""


@dataclass(frozen=True)
class EntryChanges:
    seq: int
    payment_id: str
    posted_at: datetime
    deltas: tuple[tuple[str, int], ...]  # (account_id, net amount), first-seen order
    currency: str
    head: LedgerHead  # the head after this entry


@dataclass(frozen=True)
class ReceiptRow:
    code: str
    number: str
    payment_id: str
    journal_seq: int
    check_code: str
    face: Mapping[str, Any]
    signature: str
    key_id: str
    issued_at: datetime


@dataclass(frozen=True)
class StatementLine:
    """One line of an account's statement: an entry that moved its balance."""

    account_id: str
    seq: int
    payment_id: str
    amount: int
    balance_after: int
    posted_at: datetime


@dataclass(frozen=True)
class Fault:
    kind: str  # seq_gap | chain_link | hash_mismatch | unbalanced
    message: str


def chain_faults(
    head: LedgerHead, entry: JournalEntryPosted, *, recomputed: str | None = None
) -> list[Fault]:
    """What is wrong with folding ``entry`` (seq above the head) after ``head``.
    ``recomputed``: ``hash_of(entry)`` when the caller has it already (the audit
    replay computes it in a worker process)."""
    faults: list[Fault] = []
    if entry.seq != head.seq + 1:
        missing = (
            f"{head.seq + 1}" if entry.seq == head.seq + 2 else f"{head.seq + 1}..{entry.seq - 1}"
        )
        faults.append(
            Fault("seq_gap", f"entry {entry.seq} follows {head.seq}: entries {missing} are missing")
        )
    elif entry.prev_hash != head.hash:
        faults.append(
            Fault("chain_link", f"entry {entry.seq} does not link to the hash of entry {head.seq}")
        )
    if (recomputed if recomputed is not None else hash_of(entry)) != entry.hash:
        faults.append(
            Fault(
                "hash_mismatch",
                f"entry {entry.seq} was altered: its hash does not match its content",
            )
        )
    total = sum(line.amount for line in entry.lines)
    if total != 0:
        faults.append(
            Fault(
                "unbalanced",
                f"entry {entry.seq} does not balance to zero (lines sum to {total} fen)",
            )
        )
    return faults


def fold_entry(head: LedgerHead, entry: JournalEntryPosted) -> EntryChanges:
    """The changes ``entry`` makes, without checking it (see ``chain_faults``)."""
    deltas: dict[str, int] = {}
    for line in entry.lines:
        deltas[line.account_id] = deltas.get(line.account_id, 0) + line.amount
    counters = dict(head.next_receipt_numbers)
    if entry.receipt is not None:
        code, number = entry.receipt.code, int(entry.receipt.number)
        counters[code] = max(counters.get(code, 1), number + 1)
    return EntryChanges(
        seq=entry.seq,
        payment_id=entry.payment_id,
        posted_at=entry.posted_at,
        deltas=tuple(deltas.items()),
        currency=entry.currency,
        head=LedgerHead(seq=entry.seq, hash=entry.hash, next_receipt_numbers=counters),
    )


def entry_changes(head: LedgerHead, entry: JournalEntryPosted) -> EntryChanges | None:
    """What folding ``entry`` after ``head`` changes; None when already folded."""
    if entry.seq <= head.seq:
        if entry.seq == head.seq and entry.hash != head.hash:
            raise ChainBroken(f"entry {entry.seq} differs from the one already folded")
        return None
    faults = chain_faults(head, entry)
    if faults:
        raise ChainBroken(faults[0].message)
    return fold_entry(head, entry)


def statement_lines(changes: EntryChanges, balance_after: Mapping[str, int]) -> list[StatementLine]:
    """The statement lines of an entry: one per account whose balance it moved."""
    return [
        StatementLine(
            account_id=account_id,
            seq=changes.seq,
            payment_id=changes.payment_id,
            amount=delta,
            balance_after=balance_after[account_id],
            posted_at=changes.posted_at,
        )
        for account_id, delta in changes.deltas
        if delta != 0
    ]


def receipt_row(issued: ReceiptIssued) -> ReceiptRow:
    face = issued.receipt
    return ReceiptRow(
        code=str(face["code"]),
        number=str(face["number"]),
        payment_id=issued.payment_id,
        journal_seq=issued.journal_seq,
        check_code=str(face["check_code"]),
        face=face,
        signature=issued.signature,
        key_id=issued.key_id,
        issued_at=datetime.fromisoformat(str(face["issued_at"])),
    )


@dataclass(frozen=True)
class Balance:
    balance: int
    currency: str
    last_seq: int


@dataclass(frozen=True)
class LedgerState:
    head: LedgerHead = field(default_factory=LedgerHead)
    balances: Mapping[str, Balance] = field(default_factory=dict)
    receipts: Mapping[tuple[str, str], ReceiptRow] = field(default_factory=dict)

    def balance(self, account_id: str) -> int:
        found = self.balances.get(account_id)
        return found.balance if found else 0

    def amounts(self) -> dict[str, int]:
        return {k: v.balance for k, v in self.balances.items()}


def apply_balances(balances: dict[str, Balance], changes: EntryChanges) -> None:
    """Fold an entry's deltas into ``balances`` in place (the table form is in store)."""
    for account_id, delta in changes.deltas:
        old = balances.get(account_id)
        balances[account_id] = Balance(
            balance=(old.balance if old else 0) + delta,
            currency=changes.currency,
            last_seq=changes.seq,
        )


def project(state: LedgerState, event: EventPayload) -> LedgerState:
    """Fold one ledger event into ``state``; other event types change nothing."""
    return fold_event(event, state)


@functools.singledispatch
def fold_event(event: EventPayload, state: LedgerState) -> LedgerState:
    """``project`` by event type: one registered function per event (none: no change)."""
    return state


@fold_event.register
def _project_entry(event: JournalEntryPosted, state: LedgerState) -> LedgerState:
    changes = entry_changes(state.head, event)
    if changes is None:
        return state
    balances = dict(state.balances)
    apply_balances(balances, changes)
    return replace(state, head=changes.head, balances=balances)


@fold_event.register
def _project_receipt(event: ReceiptIssued, state: LedgerState) -> LedgerState:
    row = receipt_row(event)
    if (row.code, row.number) in state.receipts:
        return state
    return replace(state, receipts={**state.receipts, (row.code, row.number): row})
