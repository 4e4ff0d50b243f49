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
import uuid
from collections.abc import Iterable
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
