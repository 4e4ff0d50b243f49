"""A run of payments, allocations and refunds booked at once (issue 13): the same
decisions, bytes and events as ``LedgerHandlers`` applying them one by one, with each
table read and written once per run.

The single writer's cost was per event: the head lock, the balance reads, a journal
insert, an UPDATE of the bureau's hot balance row, statement lines, the head and the
outbox, each a round trip. ``InboxConsumer`` hands a run of consecutive
``PaymentAuthorized`` / ``MedicalAccountAllocated`` / ``RefundAuthorized`` events to
``post_run`` (``shared.consumer.Batched``), which

1. takes the head lock once and reads, in one statement each, which ids were decided
   before, the last closed clearing day, the payments the refunds refund (entry,
   receipt face, earlier refunds), and the balances of every account the run may
   touch (key order);
2. decides each event in order in memory with the very ``decide_*`` the single path
   uses, against a ``RunBooks`` that is exactly what the tables would hold after the
   events before it: the head (seq, hash, receipt counters) advances entry by entry
   through the projector's ``entry_changes``, balances move by each entry's deltas
   (so insufficient funds is decided against the running balance), ids decided and
   refunds booked earlier in the run count, the clock is read once per decision;
3. writes it all set-based: journal rows, rejections, receipts, each account's row
   once (net delta, checked against the balance computed), statement lines, the head
   once, one ``write_outbox`` with every event in order, and the owners.

Anything unexpected raises, and the consumer re-applies the batch one event per
savepoint through the single path, which stays the reference: a personal account
that would go negative (the table's CHECK would refuse it), a balance row that moved
under the head lock, an ``InvalidPosting``, a refund of a payment booked in the same
run (its original is read from the journal, as the single path reads it; never
mimicked from memory). ``PayerEnrolled`` goes through the single path and ends a run.
``tests/integration/test_ledger_batch.py`` proves the equality byte for byte.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import date

import asyncpg

from services.ledger import store
from services.ledger.domain.accounts import (
    CLEARING,
    InvalidPosting,
    allocation_lines,
    must_stay_non_negative,
    payment_route,
    premium_memo_lines,
    transaction_amount,
)
from services.ledger.domain.chain import LedgerHead
from services.ledger.domain.posting import (
    Decision,
    Posting,
    RefundContext,
    accounts_involved,
)
from services.ledger.domain.projector import (
    EntryChanges,
    ReceiptRow,
    StatementLine,
    entry_changes,
    receipt_row,
    statement_lines,
)
from shared.errors import YibaoError
from shared.events import (
    Envelope,
    Event,
    MedicalAccountAllocated,
    PaymentAuthorized,
    RefundAuthorized,
)
from shared.outbox import write_outbox


class RunRefused(YibaoError):
    """The run cannot be booked at once; the consumer applies it one event at a time."""


def accounts_touched(payload: object) -> set[str]:
    """The accounts a posting of ``payload`` may read or move (read up front; one the
    run did not foresee is read when needed)."""
    if isinstance(payload, PaymentAuthorized):
        payment = payload.payment
        with contextlib.suppress(InvalidPosting):  # decided in order, as the single path
            found = {*accounts_involved(payment), CLEARING}
            if payment.purpose.type == "premium":
                memo = premium_memo_lines(payment.purpose.region, payment.amount)
                found.update(line.account_id for line in memo)
            return found
        return set()
    if isinstance(payload, MedicalAccountAllocated):
        lines = allocation_lines(payload.region, payload.payer_id, payload.amount)
        return {line.account_id for line in lines}
    return set()


@dataclass
class RunBooks:
    """What the tables would hold after the run's decisions so far (module docstring)."""

    head: LedgerHead
    last_closed: date | None
    posted: set[str]  # payment / allocation ids with a journal entry
    rejected: set[str]  # payment ids rejected
    refunds_posted: set[str] = field(default_factory=set)  # refund ids with an entry
    refunds_rejected: set[str] = field(default_factory=set)  # refund ids rejected
    refundable: dict[str, store.Refundable] = field(default_factory=dict)  # refunds' payments
    fresh: set[str] = field(default_factory=set)  # payments posted in this run
    balances: dict[str, int] = field(default_factory=dict)  # every account read or moved
    stored: set[str] = field(default_factory=set)  # accounts with a row before the run
    decisions: list[Decision] = field(default_factory=list)
    journal: list[store.JournalRow] = field(default_factory=list)
    receipts: list[ReceiptRow] = field(default_factory=list)
    lines: list[StatementLine] = field(default_factory=list)
    moves: dict[str, store.BalanceMove] = field(default_factory=dict)

    async def read(self, conn: asyncpg.Connection, account_ids: Iterable[str]) -> None:
        """Read the balances of the accounts not read yet."""
        missing = {a for a in account_ids if a not in self.balances}
        if not missing:
            return
        found = await store.balances_of(conn, missing)
        self.stored.update(found)
        self.balances.update({a: found.get(a, 0) for a in missing})

    def decided(self, posting_id: str, *, rejections: bool = True) -> str | None:
        if posting_id in self.posted:
            return "posted"
        return "rejected" if rejections and posting_id in self.rejected else None

    async def refund_context(
        self, conn: asyncpg.Connection, refund: RefundAuthorized
    ) -> RefundContext:
        """``store.refund_context`` from the run's books."""
        rid = refund.refund_id
        posted, rejected = rid in self.refunds_posted, rid in self.refunds_rejected
        decided = "posted" if posted else "rejected" if rejected else None
        if decided is None and refund.payment_id in self.fresh:
            # Its original's face would be read back from jsonb: not worth mimicking.
            raise RunRefused(f"refund {rid} of payment {refund.payment_id} booked in this run")
        found = self.refundable.get(refund.payment_id)
        if decided is not None or found is None:
            return RefundContext(self.head, decided, None, None, 0)
        await self.read(conn, payment_route(found.original))
        return RefundContext(
            self.head,
            None,
            found.original,
            found.face,
            found.refunded,
            self.balances,
            self.last_closed,
        )

    def record(self, decision: Decision) -> None:
        """``store.record_decision`` in memory: the rows it writes, in order."""
        self.decisions.append(decision)
        outcome = decision.outcome
        if not isinstance(outcome, Posting):
            if outcome.refund_id is not None:
                self.refunds_rejected.add(outcome.refund_id)
            else:
                self.rejected.add(outcome.payment_id)
            return
        entry, receipt = outcome.entry, outcome.receipt
        events = decision.events
        self.journal.append(
            store.JournalRow(
                entry, events[0].event_id, receipt, events[1].event_id if receipt else None
            )
        )
        if entry.refund_id is not None:
            self.refunds_posted.add(entry.refund_id)
            found = self.refundable.get(entry.payment_id)
            if found is not None:  # the payment's next refund counts this one
                moved = found.refunded + transaction_amount(entry)
                self.refundable[entry.payment_id] = replace(found, refunded=moved)
        else:
            self.posted.add(entry.payment_id)
            self.fresh.add(entry.payment_id)
        changes = entry_changes(self.head, entry)
        if changes is not None:
            self._fold(changes)
        if receipt is not None:
            self.receipts.append(receipt_row(receipt))

    def _fold(self, changes: EntryChanges) -> None:
        """``store._write_changes`` in memory: each delta (zero ones too, as the
        UPDATE sets ``last_seq``), the statement lines, the head."""
        after: dict[str, int] = {}
        for account_id, delta in changes.deltas:
            if account_id not in self.balances:
                raise RunRefused(f"account {account_id} was not read before it moved")
            balance = self.balances[account_id] + delta
            if must_stay_non_negative(account_id) and balance < 0:
                raise RunRefused(f"{account_id} would go negative (the table refuses it)")
            self.balances[account_id] = after[account_id] = balance
            old = self.moves.get(account_id)
            self.moves[account_id] = store.BalanceMove(
                account_id=account_id,
                delta=(old.delta if old else 0) + delta,
                balance=balance,
                currency=old.currency if old else changes.currency,
                last_seq=changes.seq,
                created=account_id not in self.stored,
            )
        self.lines.extend(statement_lines(changes, after))
        self.head = changes.head

    def events(self) -> list[Envelope]:
        return [e for d in self.decisions for e in d.events]

    async def write(self, conn: asyncpg.Connection, topic: str) -> None:
        """Everything the run decided, one statement per table."""
        if not self.decisions:
            return
        await store.insert_entries(conn, self.journal)
        await store.insert_rejections(conn, self.decisions)
        await store.write_balances(conn, list(self.moves.values()), self.lines)
        await store.insert_receipts(conn, self.receipts)
        await store.save_head(conn, self.head)
        await write_outbox(conn, topic, self.events())


async def open_books(conn: asyncpg.Connection, events: list[Event]) -> RunBooks:
    """The head (locked), what was decided before, the last closed day, the payments
    the run's refunds refund, and the balances the run will need."""
    head = await store.load_head(conn, lock=True)
    postings = [e.payload for e in events if not isinstance(e.payload, RefundAuthorized)]
    ids = [posting_id(p) for p in postings]
    posted, rejected = await store.decided_ids(conn, ids) if ids else (set(), set())
    books = RunBooks(head, await store.last_closed_day(conn), posted, rejected)
    refunds = [e.payload for e in events if isinstance(e.payload, RefundAuthorized)]
    if refunds:
        books.refunds_posted, books.refunds_rejected = await store.decided_refunds(
            conn, [r.refund_id for r in refunds]
        )
        books.refundable = await store.refundables(conn, [r.payment_id for r in refunds])
    wanted: set[str] = set()
    for payload, pid in zip(postings, ids, strict=True):
        if books.decided(pid) is None:
            wanted |= accounts_touched(payload)
    for found in books.refundable.values():
        wanted.update(payment_route(found.original))
    await books.read(conn, wanted)
    return books


def posting_id(payload: object) -> str:
    """The id a payment or an allocation is booked under (``journal.payment_id``)."""
    if isinstance(payload, PaymentAuthorized):
        return payload.payment.payment_id
    if isinstance(payload, MedicalAccountAllocated):
        return payload.allocation_id
    raise TypeError(f"{type(payload).__name__} is not booked in a run")
