"""Reconciling a bank's statement of a day with the journal. Pure.

The ledger's side of bank day D: every journal record the bank confirmed, whose
confirmation time falls in D (the bank's cut-off; a force-closed day of ours does not
move it): a card debit (a payment's ``bank_reference``), a card refund (a refund's),
a settlement transfer (an arrival's). The bank's side: the statement's lines. Lines
are matched by (reference, kind):

- same amount: matched;
- amounts differ: ``amount_mismatch``;
- only in the journal: ``missing_in_bank``; only in the statement: ``missing_in_ledger``
  (named with the journal's payment and seq when the journal has it on another day);
- a (reference, kind) the statement lists twice: ``duplicate`` (each extra line).

A debit the ledger never booked whose full amount the same statement refunds (the
payment service reversing a debit that answered too late) nets to nothing at the bank:
counted as ``reversed``, not a discrepancy. The reversal can fall on the next bank day
(a debit confirmed just before the cut-off, reversed just after): the debit was then
reported ``missing_in_ledger`` by its own day's reconciliation, and that report
(``earlier_unbooked``: the unbooked debits earlier reconciliations named) pairs the
refund on the later statement, so it is ``reversed`` there, not missing again. Same
statement, same journal, same earlier reconciliations: same answer.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time

from services.ledger.domain.accounts import transaction_amount
from services.ledger.domain.clearing import bank_day
from shared.digits import ascii_digits
from shared.errors import ValidationFailed
from shared.events import JournalEntryPosted, StatementDiscrepancy

BANK_KINDS = ("debit", "refund", "transfer")
REQUIRED = ("reference", "kind", "amount")


@dataclass(frozen=True)
class LedgerRecord:
    reference: str
    kind: str  # debit | refund | transfer
    amount: int
    payment_id: str
    journal_seq: int
    confirmed_at: datetime


def ledger_record(entry: JournalEntryPosted) -> LedgerRecord | None:
    """The bank-confirmed record an entry carries, if any."""
    if entry.bank_reference is None or entry.bank_confirmed_at is None:
        return None
    kinds = {"premium": "debit", "wallet_topup": "debit", "refund": "refund"}
    kind = kinds.get(entry.kind, "transfer" if entry.kind == "settlement_arrival" else "")
    if not kind:
        return None
    return LedgerRecord(
        reference=entry.bank_reference,
        kind=kind,
        amount=transaction_amount(entry),
        payment_id=entry.payment_id,
        journal_seq=entry.seq,
        confirmed_at=entry.bank_confirmed_at,
    )


@dataclass(frozen=True)
class BankLine:
    number: int  # 1-based line of the file (the header is line 1)
    reference: str
    kind: str
    amount: int
    related_reference: str


def statement_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _bad(line: int, column: str, what: str) -> ValidationFailed:
    return ValidationFailed(
        f"statement line {line}, column {column!r}: {what}; send the bank's statement CSV "
        f"as it came (header with {', '.join(REQUIRED)})",
        param=f"line {line}: {column}",
    )


def parse_statement(text: str) -> list[BankLine]:
    """The statement's lines; ``ValidationFailed`` (400) naming the line and column."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header:
        raise _bad(1, "header", "the statement is empty")
    names = [h.strip() for h in header]
    for column in REQUIRED:
        if column not in names:
            raise _bad(1, column, "the header lacks this column")
    at = {name: names.index(name) for name in names}
    out = []
    for n, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise _bad(n, "*", f"{len(row)} fields, the header has {len(names)}")
        reference, kind, amount = (row[at[c]].strip() for c in REQUIRED)
        if not reference:
            raise _bad(n, "reference", "empty")
        if kind not in BANK_KINDS:
            raise _bad(n, "kind", f"{kind!r} is not one of {', '.join(BANK_KINDS)}")
        if not ascii_digits(amount) or int(amount) <= 0:
            raise _bad(n, "amount", f"{amount!r} is not a positive integer (fen)")
        related = row[at["related_reference"]].strip() if "related_reference" in at else ""
        out.append(BankLine(n, reference, kind, int(amount), related))
    return out


@dataclass(frozen=True)
class Reconciliation:
    matched: int
    reversed: int
    discrepancies: tuple[StatementDiscrepancy, ...]


def _discrepancy(
    kind: str, reference: str, bank_kind: str, record: LedgerRecord | None, bank: int | None
) -> StatementDiscrepancy:
    return StatementDiscrepancy(
        kind=kind,
        reference=reference,
        bank_kind=bank_kind,
        payment_id=record.payment_id if record else None,
        journal_seq=record.journal_seq if record else None,
        ledger_amount=record.amount if record else None,
        bank_amount=bank,
    )


def _reversed_debits(
    unmatched: list[BankLine],
    known: Mapping[tuple[str, str], object],
    earlier_unbooked: Mapping[str, int],
) -> set[int]:
    """Line numbers of unbooked debits the statement refunds in full, with those refunds;
    and of refunds that give back in full a debit an earlier day's statement held."""
    refunds: dict[str, list[BankLine]] = {}
    for b in unmatched:
        if b.kind == "refund" and b.related_reference and (b.reference, "refund") not in known:
            refunds.setdefault(b.related_reference, []).append(b)
    out: set[int] = set()
    debits_here: set[str] = set()
    for b in unmatched:
        if b.kind != "debit":
            continue
        debits_here.add(b.reference)
        back = refunds.get(b.reference, [])
        unbooked = (b.reference, "debit") not in known
        if unbooked and back and sum(r.amount for r in back) == b.amount:
            out.add(b.number)
            out.update(r.number for r in back)
    for reference, back in refunds.items():
        amount = earlier_unbooked.get(reference)
        unbooked = (reference, "debit") not in known
        if reference in debits_here or amount is None or not unbooked:
            continue
        if sum(r.amount for r in back) == amount:
            out.update(r.number for r in back)
    return out


def earlier_unbooked_debits(
    outcomes: Iterable[tuple[date, Iterable[StatementDiscrepancy]]], before: date
) -> dict[str, int]:
    """The debits earlier reconciliations (of days before ``before``) found at the bank
    and not in the journal: reference → the bank's amount."""
    found: dict[str, int] = {}
    for day, discrepancies in outcomes:
        if day >= before:
            continue
        for d in discrepancies:
            if d.kind == "missing_in_ledger" and d.bank_kind == "debit" and d.bank_amount:
                found[d.reference] = d.bank_amount
    return found


def reconcile(
    day: date,
    records: Iterable[LedgerRecord],
    statement: list[BankLine],
    *,
    cutoff: time,
    earlier_unbooked: Mapping[str, int] | None = None,
) -> Reconciliation:
    """Match ``statement`` (the bank's day ``day``) with the journal's ``records``
    (every bank-confirmed record; those of bank day ``day`` are the ledger's side);
    ``earlier_unbooked``: ``earlier_unbooked_debits`` of the reconciliations before."""
    everything = {(r.reference, r.kind): r for r in records}
    ours = {k: r for k, r in everything.items() if bank_day(r.confirmed_at, cutoff) == day}
    found: list[StatementDiscrepancy] = []
    first: dict[tuple[str, str], BankLine] = {}
    for b in statement:
        key = (b.reference, b.kind)
        if key in first:
            found.append(
                _discrepancy("duplicate", b.reference, b.kind, everything.get(key), b.amount)
            )
        else:
            first[key] = b
    matched = 0
    for key, record in ours.items():
        line = first.get(key)
        if line is None:
            found.append(
                _discrepancy("missing_in_bank", record.reference, record.kind, record, None)
            )
        elif line.amount != record.amount:
            found.append(
                _discrepancy("amount_mismatch", record.reference, record.kind, record, line.amount)
            )
        else:
            matched += 1
    unmatched = [b for k, b in first.items() if k not in ours]
    reversed_lines = _reversed_debits(
        [b for b in unmatched if b.kind != "transfer"], everything, earlier_unbooked or {}
    )
    for b in unmatched:
        if b.number not in reversed_lines:
            found.append(
                _discrepancy(
                    "missing_in_ledger",
                    b.reference,
                    b.kind,
                    everything.get((b.reference, b.kind)),
                    b.amount,
                )
            )
    found.sort(key=lambda d: (d.reference, d.bank_kind, d.kind, d.bank_amount or 0))
    return Reconciliation(matched, len(reversed_lines), tuple(found))
