"""asyncpg access to the journal and its projections.

Reads return frozen dataclasses. Posting is load, decide, persist: the handler loads
one context (``payment_context`` / ``refund_context`` / ``allocation_context``, which
takes the head row lock that serializes posting), the domain decides, and
``record_decision`` writes everything in the handler's transaction: the journal row,
the projection (through the projector, from the head already loaded) and the outbox.
``rebuild_projections`` folds the ledger.v1 log through the same table projector, so
the tables a replay builds are the tables live posting built.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeAlias

import asyncpg

from services.ledger.domain.accounts import payment_route, transaction_amount
from services.ledger.domain.chain import GENESIS_HASH, LedgerHead
from services.ledger.domain.posting import (
    AllocationContext,
    Decision,
    PaymentContext,
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
    Event,
    EventPayload,
    JournalEntryPosted,
    PaymentDetails,
    PostingRejected,
    ReceiptIssued,
    RefundAuthorized,
)
from shared.outbox import write_outbox

Reader: TypeAlias = asyncpg.Connection | asyncpg.Pool


class RebuildIncomplete(YibaoError):
    """The replayed events end before the journal does."""


@dataclass(frozen=True)
class JournalRow:
    """One journal row of a run: the entry, its event id, its receipt and that event's."""

    entry: JournalEntryPosted
    event_id: uuid.UUID
    receipt: ReceiptIssued | None = None
    receipt_event_id: uuid.UUID | None = None


@dataclass(frozen=True)
class BalanceMove:
    """What a run did to one account: its net ``delta``, the ``balance`` after it, the
    last entry that touched it; ``created`` when the account had no row before."""

    account_id: str
    delta: int
    balance: int
    currency: str
    last_seq: int
    created: bool


@dataclass(frozen=True)
class AccountBalance:
    account_id: str
    balance: int
    currency: str
    last_seq: int


# ---------------------------------------------------------------------------
# Head
# ---------------------------------------------------------------------------

_HEAD = "SELECT seq, hash, receipt_counters FROM ledger_head WHERE id = 1"


async def load_head(conn: asyncpg.Connection, *, lock: bool = False) -> LedgerHead:
    """The journal head; ``lock`` takes the row lock that serializes posting."""
    row = await conn.fetchrow(_HEAD + (" FOR UPDATE" if lock else ""))
    assert row is not None, "ledger_head is seeded by the migration"
    counters = {str(k): int(v) for k, v in dict(row["receipt_counters"]).items()}
    return LedgerHead(seq=row["seq"], hash=row["hash"], next_receipt_numbers=counters)


async def _save_head(conn: asyncpg.Connection, head: LedgerHead) -> None:
    await conn.execute(
        "UPDATE ledger_head SET seq = $1, hash = $2, receipt_counters = $3 WHERE id = 1",
        head.seq,
        head.hash,
        dict(sorted(head.next_receipt_numbers.items())),
    )


# ---------------------------------------------------------------------------
# Loading what a decision needs (under the head lock)
# ---------------------------------------------------------------------------


async def _balances_of(conn: asyncpg.Connection, account_ids: Iterable[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT account_id, balance FROM balances WHERE account_id = ANY($1::text[])",
        list(account_ids),
    )
    return {r["account_id"]: r["balance"] for r in rows}


async def last_closed_day(conn: Reader) -> date | None:
    """The latest closed clearing day (postings go after it)."""
    day: date | None = await conn.fetchval("SELECT max(day) FROM clearing_days")
    return day


async def payment_context(conn: asyncpg.Connection, payment: PaymentDetails) -> PaymentContext:
    head = await load_head(conn, lock=True)
    decided: str | None = await conn.fetchval(
        "SELECT 'posted' FROM journal WHERE payment_id = $1 AND refund_id IS NULL"
        " UNION ALL SELECT 'rejected' FROM rejections"
        " WHERE payment_id = $1 AND refund_id IS NULL LIMIT 1",
        payment.payment_id,
    )
    balances = {} if decided else await _balances_of(conn, accounts_involved(payment))
    closed = await last_closed_day(conn)
    return PaymentContext(head=head, decided=decided, balances=balances, last_closed=closed)


async def allocation_context(conn: asyncpg.Connection, allocation_id: str) -> AllocationContext:
    head = await load_head(conn, lock=True)
    decided: str | None = await conn.fetchval(
        "SELECT 'posted' FROM journal WHERE payment_id = $1 AND refund_id IS NULL",
        allocation_id,
    )
    return AllocationContext(head=head, decided=decided, last_closed=await last_closed_day(conn))


async def refund_context(conn: asyncpg.Connection, refund: RefundAuthorized) -> RefundContext:
    head = await load_head(conn, lock=True)
    decided: str | None = await conn.fetchval(
        "SELECT 'posted' FROM journal WHERE refund_id = $1"
        " UNION ALL SELECT 'rejected' FROM rejections WHERE refund_id = $1 LIMIT 1",
        refund.refund_id,
    )
    row = await conn.fetchrow(
        "SELECT entry, receipt_event FROM journal WHERE payment_id = $1 AND refund_id IS NULL",
        refund.payment_id,
    )
    if decided or row is None:
        return RefundContext(head, decided, None, None, 0)
    original = JournalEntryPosted.model_validate(row["entry"])
    face = dict(row["receipt_event"]["receipt"]) if row["receipt_event"] else None
    earlier = await conn.fetch(
        "SELECT entry FROM journal WHERE payment_id = $1 AND refund_id IS NOT NULL",
        refund.payment_id,
    )
    refunded = sum(
        transaction_amount(JournalEntryPosted.model_validate(r["entry"])) for r in earlier
    )
    balances = await _balances_of(conn, payment_route(original))
    closed = await last_closed_day(conn)
    return RefundContext(head, decided, original, face, refunded, balances, closed)


# ---------------------------------------------------------------------------
# Persisting a decision: journal (or rejection), projection, outbox
# ---------------------------------------------------------------------------


async def record_decision(
    conn: asyncpg.Connection, head: LedgerHead, decision: Decision, *, topic: str
) -> None:
    """Write ``decision`` (taken after ``head``) in the caller's transaction."""
    outcome = decision.outcome
    if isinstance(outcome, PostingRejected):
        await _insert_rejection(conn, outcome, decision)
    else:
        await _insert_journal(conn, outcome, decision)
        new_head = await project_tables(outcome.entry, conn, head)
        if outcome.receipt is not None:
            await project_tables(outcome.receipt, conn, new_head)
    await write_outbox(conn, topic, list(decision.events))


async def _insert_rejection(
    conn: asyncpg.Connection, rejection: PostingRejected, decision: Decision
) -> None:
    envelope = decision.events[0]
    await conn.execute(
        "INSERT INTO rejections (payment_id, event_id, causation_id, account_id, balance,"
        " amount, decline_code, rejected_at, refund_id)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        rejection.payment_id,
        envelope.event_id,
        envelope.causation_id,
        rejection.account_id,
        rejection.balance,
        rejection.amount,
        rejection.decline_code,
        decision.decided_at,
        rejection.refund_id,
    )


async def _insert_journal(conn: asyncpg.Connection, posting: Posting, decision: Decision) -> None:
    receipt = posting.receipt
    receipt_event_id = decision.events[1].event_id if receipt is not None else None
    await insert_entry(conn, posting.entry, decision.events[0].event_id, receipt, receipt_event_id)


async def insert_entry(
    conn: asyncpg.Connection,
    entry: JournalEntryPosted,
    event_id: uuid.UUID,
    receipt: ReceiptIssued | None = None,
    receipt_event_id: uuid.UUID | None = None,
) -> None:
    """One journal row (the projection is ``project_tables``'s job)."""
    await conn.execute(
        "INSERT INTO journal (seq, payment_id, transaction_id, event_id, entry, hash, prev_hash,"
        " posted_at, receipt_event_id, receipt_event, refund_id, kind, clearing_day,"
        " bank_confirmed_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        entry.seq,
        entry.payment_id,
        uuid.UUID(entry.transaction_id),
        event_id,
        entry.model_dump(mode="json"),
        entry.hash,
        entry.prev_hash,
        entry.posted_at,
        receipt_event_id,
        receipt.model_dump(mode="json") if receipt else None,
        entry.refund_id,
        entry.kind,
        date.fromisoformat(entry.clearing_day) if entry.clearing_day else None,
        entry.bank_confirmed_at,
    )


async def append_entry(
    conn: asyncpg.Connection, head: LedgerHead, entry: JournalEntryPosted, event_id: uuid.UUID
) -> LedgerHead:
    """Append an entry without a receipt (settlement) after ``head`` (locked by the
    caller) and fold it into the projection; the new head."""
    await insert_entry(conn, entry, event_id)
    return await project_tables(entry, conn, head)


# ---------------------------------------------------------------------------
# The projector, on tables
# ---------------------------------------------------------------------------


@functools.singledispatch
async def project_tables(
    event: EventPayload, conn: asyncpg.Connection, head: LedgerHead
) -> LedgerHead:
    """Fold one ledger event into the projection tables after ``head`` (idempotent);
    the head after it. Other event types change nothing."""
    return head


@project_tables.register
async def _entry_tables(
    event: JournalEntryPosted, conn: asyncpg.Connection, head: LedgerHead
) -> LedgerHead:
    changes = entry_changes(head, event)
    if changes is None:
        return head
    await _write_changes(conn, changes)
    return changes.head


@project_tables.register
async def _receipt_tables(
    event: ReceiptIssued, conn: asyncpg.Connection, head: LedgerHead
) -> LedgerHead:
    row = receipt_row(event)
    await conn.execute(
        "INSERT INTO receipts (code, number, payment_id, journal_seq, check_code, face,"
        " signature, key_id, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        " ON CONFLICT (code, number) DO NOTHING",
        row.code,
        row.number,
        row.payment_id,
        row.journal_seq,
        row.check_code,
        dict(row.face),
        row.signature,
        row.key_id,
        row.issued_at,
    )
    return head


async def _write_changes(conn: asyncpg.Connection, changes: EntryChanges) -> None:
    # UPDATE, then INSERT when missing (not an upsert: PostgreSQL checks the
    # never-negative constraint on the would-be inserted delta row). The head lock
    # held by the caller keeps concurrent writers out.
    after: dict[str, int] = {}
    for account_id, delta in changes.deltas:
        balance = await conn.fetchval(
            "UPDATE balances SET balance = balance + $2, last_seq = $3 WHERE account_id = $1"
            " RETURNING balance",
            account_id,
            delta,
            changes.seq,
        )
        if balance is None:
            balance = await conn.fetchval(
                "INSERT INTO balances (account_id, balance, currency, last_seq)"
                " VALUES ($1, $2, $3, $4) RETURNING balance",
                account_id,
                delta,
                changes.currency,
                changes.seq,
            )
        after[account_id] = balance
    lines = statement_lines(changes, after)
    if lines:
        await conn.executemany(
            "INSERT INTO statement_lines (account_id, seq, payment_id, amount,"
            " balance_after, posted_at) VALUES ($1, $2, $3, $4, $5, $6)",
            [
                (x.account_id, x.seq, x.payment_id, x.amount, x.balance_after, x.posted_at)
                for x in lines
            ],
        )
    await _save_head(conn, changes.head)


# ---------------------------------------------------------------------------
# A run of decisions at once (services.ledger.batch): one statement per table
# ---------------------------------------------------------------------------


async def decided_ids(conn: asyncpg.Connection, ids: Sequence[str]) -> tuple[set[str], set[str]]:
    """Of the payment and allocation ids ``ids``: those with a journal entry and those
    rejected (refunds aside), as ``payment_context`` asks one id at a time."""
    rows = await conn.fetch(
        "SELECT payment_id, true AS posted FROM journal"
        " WHERE payment_id = ANY($1::text[]) AND refund_id IS NULL"
        " UNION ALL SELECT payment_id, false FROM rejections"
        " WHERE payment_id = ANY($1::text[]) AND refund_id IS NULL",
        list(ids),
    )
    posted = {r["payment_id"] for r in rows if r["posted"]}
    return posted, {r["payment_id"] for r in rows if not r["posted"]}


async def decided_refunds(
    conn: asyncpg.Connection, refund_ids: Sequence[str]
) -> tuple[set[str], set[str]]:
    """Of ``refund_ids``: those with a journal entry and those rejected, as
    ``refund_context`` asks one refund at a time."""
    rows = await conn.fetch(
        "SELECT refund_id, true AS posted FROM journal WHERE refund_id = ANY($1::text[])"
        " UNION ALL SELECT refund_id, false FROM rejections WHERE refund_id = ANY($1::text[])",
        list(refund_ids),
    )
    posted = {r["refund_id"] for r in rows if r["posted"]}
    return posted, {r["refund_id"] for r in rows if not r["posted"]}


@dataclass(frozen=True)
class Refundable:
    """What ``refund_context`` reads of a payment: its entry, its receipt's face, and
    what its refunds in the journal moved."""

    original: JournalEntryPosted
    face: dict[str, Any] | None
    refunded: int


async def refundables(
    conn: asyncpg.Connection, payment_ids: Sequence[str]
) -> dict[str, Refundable]:
    """``Refundable`` of each of ``payment_ids`` in the journal, in one statement."""
    rows = await conn.fetch(
        "SELECT payment_id, refund_id, entry, receipt_event FROM journal"
        " WHERE payment_id = ANY($1::text[])",
        list(payment_ids),
    )
    refunded: dict[str, int] = {}
    for r in rows:
        if r["refund_id"] is not None:
            amount = transaction_amount(JournalEntryPosted.model_validate(r["entry"]))
            refunded[r["payment_id"]] = refunded.get(r["payment_id"], 0) + amount
    return {
        r["payment_id"]: Refundable(
            JournalEntryPosted.model_validate(r["entry"]),
            dict(r["receipt_event"]["receipt"]) if r["receipt_event"] else None,
            refunded.get(r["payment_id"], 0),
        )
        for r in rows
        if r["refund_id"] is None
    }


async def balances_of(conn: asyncpg.Connection, account_ids: Iterable[str]) -> dict[str, int]:
    """The stored balances of ``account_ids`` (absent: no row yet), read in key order.

    Not locked row by row: every writer of ``balances`` holds the head lock."""
    return await _balances_of(conn, sorted(set(account_ids)))


async def insert_entries(conn: asyncpg.Connection, rows: Sequence[JournalRow]) -> None:
    """``insert_entry`` for each row, in one statement."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO journal (seq, payment_id, transaction_id, event_id, entry, hash, prev_hash,"
        " posted_at, receipt_event_id, receipt_event, refund_id, kind, clearing_day,"
        " bank_confirmed_at)"
        " SELECT s, p, t, e, en::jsonb, h, ph, pa, re, rv::jsonb, r, k, c, b FROM unnest("
        "$1::bigint[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], $6::text[], $7::text[],"
        " $8::timestamptz[], $9::uuid[], $10::text[], $11::text[], $12::text[], $13::date[],"
        " $14::timestamptz[]) AS u(s, p, t, e, en, h, ph, pa, re, rv, r, k, c, b)",
        [r.entry.seq for r in rows],
        [r.entry.payment_id for r in rows],
        [uuid.UUID(r.entry.transaction_id) for r in rows],
        [r.event_id for r in rows],
        # The text the jsonb codec sends (json.dumps), cast by the server: same values.
        [json.dumps(r.entry.model_dump(mode="json")) for r in rows],
        [r.entry.hash for r in rows],
        [r.entry.prev_hash for r in rows],
        [r.entry.posted_at for r in rows],
        [r.receipt_event_id for r in rows],
        [json.dumps(r.receipt.model_dump(mode="json")) if r.receipt else None for r in rows],
        [r.entry.refund_id for r in rows],
        [r.entry.kind for r in rows],
        [date.fromisoformat(r.entry.clearing_day) if r.entry.clearing_day else None for r in rows],
        [r.entry.bank_confirmed_at for r in rows],
    )


async def insert_rejections(conn: asyncpg.Connection, decisions: Sequence[Decision]) -> None:
    """``_insert_rejection`` for each rejecting decision, in one statement."""
    rejected = [(d.outcome, d) for d in decisions if isinstance(d.outcome, PostingRejected)]
    if not rejected:
        return
    await conn.execute(
        "INSERT INTO rejections (payment_id, event_id, causation_id, account_id, balance,"
        " amount, decline_code, rejected_at, refund_id)"
        " SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[],"
        " $6::bigint[], $7::text[], $8::timestamptz[], $9::text[])",
        [r.payment_id for r, _ in rejected],
        [d.events[0].event_id for _, d in rejected],
        [d.events[0].causation_id for _, d in rejected],
        [r.account_id for r, _ in rejected],
        [r.balance for r, _ in rejected],
        [r.amount for r, _ in rejected],
        [r.decline_code for r, _ in rejected],
        [d.decided_at for _, d in rejected],
        [r.refund_id for r, _ in rejected],
    )


async def insert_receipts(conn: asyncpg.Connection, rows: Sequence[ReceiptRow]) -> None:
    """``_receipt_tables`` for each row, in one statement."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO receipts (code, number, payment_id, journal_seq, check_code, face,"
        " signature, key_id, issued_at)"
        " SELECT c, n, p, j, k, f::jsonb, s, i, t FROM unnest($1::text[], $2::text[],"
        " $3::text[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[],"
        " $9::timestamptz[]) AS u(c, n, p, j, k, f, s, i, t)"
        " ON CONFLICT (code, number) DO NOTHING",
        [r.code for r in rows],
        [r.number for r in rows],
        [r.payment_id for r in rows],
        [r.journal_seq for r in rows],
        [r.check_code for r in rows],
        [json.dumps(dict(r.face)) for r in rows],
        [r.signature for r in rows],
        [r.key_id for r in rows],
        [r.issued_at for r in rows],
    )


class BalancesMoved(YibaoError):
    """A balance row is not what the run computed: another writer without the head lock."""


async def write_balances(
    conn: asyncpg.Connection, moved: Sequence[BalanceMove], lines: Sequence[StatementLine]
) -> None:
    """Each account's row once for a run (``_write_changes`` per entry, folded): the
    existing rows in one UPDATE by their net delta (checked against the balance the run
    computed), new rows in one INSERT; then the run's statement lines."""
    stored = sorted((m for m in moved if not m.created), key=lambda m: m.account_id)
    created = sorted((m for m in moved if m.created), key=lambda m: m.account_id)
    if stored:
        rows = await conn.fetch(
            "UPDATE balances AS b SET balance = b.balance + u.delta, last_seq = u.last_seq"
            " FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(account_id, delta,"
            " last_seq) WHERE b.account_id = u.account_id RETURNING b.account_id, b.balance",
            [m.account_id for m in stored],
            [m.delta for m in stored],
            [m.last_seq for m in stored],
        )
        got = {r["account_id"]: r["balance"] for r in rows}
        want = {m.account_id: m.balance for m in stored}
        if got != want:
            raise BalancesMoved(f"balances moved under the head lock: {got} != {want}")
    if created:
        await conn.execute(
            "INSERT INTO balances (account_id, balance, currency, last_seq)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[])",
            [m.account_id for m in created],
            [m.balance for m in created],
            [m.currency for m in created],
            [m.last_seq for m in created],
        )
    if lines:
        await conn.execute(
            "INSERT INTO statement_lines (account_id, seq, payment_id, amount,"
            " balance_after, posted_at)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bigint[],"
            " $5::bigint[], $6::timestamptz[])",
            [x.account_id for x in lines],
            [x.seq for x in lines],
            [x.payment_id for x in lines],
            [x.amount for x in lines],
            [x.balance_after for x in lines],
            [x.posted_at for x in lines],
        )


async def save_head(conn: asyncpg.Connection, head: LedgerHead) -> None:
    """The head after a run (``_write_changes`` saves it after each entry)."""
    await _save_head(conn, head)


PROJECTION_TABLES = ("balances", "receipts", "statement_lines")


async def rebuild_projections(
    conn: asyncpg.Connection, events: Iterable[Event | EventPayload]
) -> LedgerHead:
    """Empty the projections and fold ``events`` (the ledger.v1 log) back into them.

    Runs in one transaction; refuses (and rolls back) if the events end before the
    journal does, or if they do not chain. Operational tables stay as they are.
    """
    async with conn.transaction():
        # The head lock first, as posting takes it: live posting waits, no deadlock.
        await load_head(conn, lock=True)
        await conn.execute(f"TRUNCATE {', '.join(PROJECTION_TABLES)}")
        head = LedgerHead()
        await _save_head(conn, head)
        for item in events:
            payload = item.payload if isinstance(item, Event) else item
            head = await project_tables(payload, conn, head)
        last = await conn.fetchrow("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
        want_seq, want_hash = (last["seq"], last["hash"]) if last else (0, GENESIS_HASH)
        if (head.seq, head.hash) != (want_seq, want_hash):
            raise RebuildIncomplete(
                f"the events end at entry {head.seq} but the journal holds {want_seq}; "
                "let the outbox relay publish everything and replay again"
            )
    return head


# ---------------------------------------------------------------------------
# Reads for the API
# ---------------------------------------------------------------------------


async def account_balance(conn: Reader, account_id: str) -> AccountBalance | None:
    row = await conn.fetchrow(
        "SELECT account_id, balance, currency, last_seq FROM balances WHERE account_id = $1",
        account_id,
    )
    return AccountBalance(**dict(row)) if row is not None else None


async def statement(
    conn: Reader, account_id: str, *, after_seq: int, limit: int
) -> list[StatementLine]:
    rows = await conn.fetch(
        "SELECT account_id, seq, payment_id, amount, balance_after, posted_at"
        " FROM statement_lines WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        account_id,
        after_seq,
        limit,
    )
    return [StatementLine(**dict(r)) for r in rows]


_RECEIPTS = (
    "SELECT code, number, payment_id, journal_seq, check_code, face, signature, key_id,"
    " issued_at FROM receipts"
)


def _receipt(row: Any) -> ReceiptRow:
    return ReceiptRow(**dict(row))


async def find_receipt(conn: Reader, code: str, number: str) -> ReceiptRow | None:
    row = await conn.fetchrow(
        _RECEIPTS + " WHERE code = $1 AND number = $2",
        code,
        number,
    )
    return _receipt(row) if row is not None else None


async def red_receipts_of(conn: Reader, code: str, number: str) -> list[ReceiptRow]:
    """The red receipts (红冲) that reverse receipt ``code``/``number``, in order."""
    rows = await conn.fetch(
        _RECEIPTS + " WHERE face ? 'relates_to'"
        " AND face -> 'relates_to' ->> 'code' = $1 AND face -> 'relates_to' ->> 'number' = $2"
        " ORDER BY journal_seq",
        code,
        number,
    )
    return [_receipt(r) for r in rows]


async def count_verification(conn: Reader, code: str, number: str) -> int:
    """Record one successful verification (查验) of a receipt; the new count."""
    count: int = await conn.fetchval(
        "INSERT INTO receipt_checks (code, number, verify_count, last_checked_at)"
        " VALUES ($1, $2, 1, now()) ON CONFLICT (code, number) DO UPDATE"
        " SET verify_count = receipt_checks.verify_count + 1, last_checked_at = now()"
        " RETURNING verify_count",
        code,
        number,
    )
    return count
