"""asyncpg access to the journal and its projections.

``apply_event`` is the projector's table form: live posting and
``rebuild_projections`` both go through it, so the tables a replay builds are the
tables live posting built.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg

from services.ledger.domain import GENESIS_HASH, LedgerHead
from services.ledger.projector import entry_changes, receipt_row, statement_lines
from shared.errors import YibaoError
from shared.events import Event, EventPayload, JournalEntryPosted, PostingRejected, ReceiptIssued


class RebuildIncomplete(YibaoError):
    """The replayed events end before the journal does."""


# ---------------------------------------------------------------------------
# Head and balances
# ---------------------------------------------------------------------------


_HEAD = "SELECT seq, hash, receipt_counters FROM ledger_head WHERE id = 1"
_HEAD_LOCKED = _HEAD + " FOR UPDATE"

Reader: TypeAlias = asyncpg.Connection | asyncpg.Pool


async def load_head(conn: asyncpg.Connection, *, lock: bool = False) -> LedgerHead:
    """The journal head; ``lock`` takes the row lock that serializes posting."""
    row = await conn.fetchrow(_HEAD_LOCKED if lock else _HEAD)
    assert row is not None, "ledger_head is seeded by the migration"
    counters = {str(k): int(v) for k, v in dict(row["receipt_counters"]).items()}
    return LedgerHead(seq=row["seq"], hash=row["hash"], next_receipt_numbers=counters)


async def _save_head(conn: asyncpg.Connection, head: LedgerHead) -> None:
    await conn.execute(
        "UPDATE ledger_head SET seq = $1, hash = $2, receipt_counters = $3 WHERE id = 1",
        head.seq, head.hash, dict(sorted(head.next_receipt_numbers.items())),
    )


async def balances_of(conn: asyncpg.Connection, account_ids: Iterable[str]) -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT account_id, balance FROM balances WHERE account_id = ANY($1::text[])",
        list(account_ids),
    )
    return {r["account_id"]: r["balance"] for r in rows}


async def account(conn: Reader, account_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT account_id, balance, currency, last_seq FROM balances WHERE account_id = $1",
        account_id,
    )


# ---------------------------------------------------------------------------
# The projector, on tables
# ---------------------------------------------------------------------------


async def apply_event(conn: asyncpg.Connection, event: EventPayload) -> None:
    """Fold one ledger event into the projection tables (idempotent)."""
    if isinstance(event, JournalEntryPosted):
        changes = entry_changes(await load_head(conn, lock=True), event)
        if changes is None:
            return
        # UPDATE, then INSERT when missing (not an upsert: PostgreSQL checks the
        # never-negative constraint on the would-be inserted delta row). The head lock
        # held above keeps concurrent writers out.
        after: dict[str, int] = {}
        for account_id, delta in changes.deltas:
            balance = await conn.fetchval(
                "UPDATE balances SET balance = balance + $2, last_seq = $3 WHERE account_id = $1"
                " RETURNING balance",
                account_id, delta, changes.seq,
            )
            if balance is None:
                balance = await conn.fetchval(
                    "INSERT INTO balances (account_id, balance, currency, last_seq)"
                    " VALUES ($1, $2, $3, $4) RETURNING balance",
                    account_id, delta, changes.currency, changes.seq,
                )
            after[account_id] = balance
        lines = statement_lines(changes, after)
        if lines:
            await conn.executemany(
                "INSERT INTO statement_lines (account_id, seq, payment_id, amount,"
                " balance_after, posted_at) VALUES ($1, $2, $3, $4, $5, $6)",
                [(x.account_id, x.seq, x.payment_id, x.amount, x.balance_after, x.posted_at)
                 for x in lines],
            )
        await _save_head(conn, changes.head)
    elif isinstance(event, ReceiptIssued):
        row = receipt_row(event)
        await conn.execute(
            "INSERT INTO receipts (code, number, payment_id, journal_seq, check_code, face,"
            " signature, key_id, issued_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (code, number) DO NOTHING",
            row.code, row.number, row.payment_id, row.journal_seq, row.check_code,
            dict(row.face), row.signature, row.key_id, row.issued_at,
        )


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
        await _save_head(conn, LedgerHead())
        for item in events:
            await apply_event(conn, item.payload if isinstance(item, Event) else item)
        head = await load_head(conn)
        last = await conn.fetchrow("SELECT seq, hash FROM journal ORDER BY seq DESC LIMIT 1")
        want_seq, want_hash = (last["seq"], last["hash"]) if last else (0, GENESIS_HASH)
        if (head.seq, head.hash) != (want_seq, want_hash):
            raise RebuildIncomplete(
                f"the events end at entry {head.seq} but the journal holds {want_seq}; "
                "let the outbox relay publish everything and replay again"
            )
    return head


async def backfill_projections(conn: asyncpg.Connection) -> bool:
    """Rebuild from the journal copy when a projection added later is still empty.

    A ledger database migrated before ``statement_lines`` existed has entries but no
    statement; one rebuild fills it (the other projections come out identical).
    """
    has_entries = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM journal)")
    has_lines = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM statement_lines)")
    if not has_entries or has_lines:
        return False
    await rebuild_projections(conn, await journal_events(conn))
    return True


# ---------------------------------------------------------------------------
# Journal and rejections
# ---------------------------------------------------------------------------


async def already_decided(conn: asyncpg.Connection, payment_id: str) -> str | None:
    """'posted' or 'rejected' when ``payment_id`` was decided before, else None."""
    found: str | None = await conn.fetchval(
        "SELECT 'posted' FROM journal WHERE payment_id = $1"
        " UNION ALL SELECT 'rejected' FROM rejections WHERE payment_id = $1 LIMIT 1",
        payment_id,
    )
    return found


async def append_journal(
    conn: asyncpg.Connection,
    entry: JournalEntryPosted,
    *,
    event_id: uuid.UUID,
    receipt: ReceiptIssued | None,
    receipt_event_id: uuid.UUID | None,
) -> None:
    await conn.execute(
        "INSERT INTO journal (seq, payment_id, transaction_id, event_id, entry, hash, prev_hash,"
        " posted_at, receipt_event_id, receipt_event)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        entry.seq, entry.payment_id, uuid.UUID(entry.transaction_id), event_id,
        entry.model_dump(mode="json"), entry.hash, entry.prev_hash, entry.posted_at,
        receipt_event_id, receipt.model_dump(mode="json") if receipt else None,
    )


async def journal_events(conn: asyncpg.Connection, after_seq: int = 0) -> list[EventPayload]:
    """The journal's events from the database copy, in order (entry, then its receipt)."""
    rows = await conn.fetch(
        "SELECT entry, receipt_event FROM journal WHERE seq > $1 ORDER BY seq", after_seq
    )
    out: list[EventPayload] = []
    for r in rows:
        out.append(JournalEntryPosted.model_validate(r["entry"]))
        if r["receipt_event"] is not None:
            out.append(ReceiptIssued.model_validate(r["receipt_event"]))
    return out


async def record_rejection(
    conn: asyncpg.Connection,
    rejection: PostingRejected,
    *,
    event_id: uuid.UUID,
    causation_id: uuid.UUID,
    rejected_at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO rejections (payment_id, event_id, causation_id, account_id, balance,"
        " amount, decline_code, rejected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        rejection.payment_id, event_id, causation_id, rejection.account_id,
        rejection.balance, rejection.amount, rejection.decline_code, rejected_at,
    )


# ---------------------------------------------------------------------------
# Receipts
# ---------------------------------------------------------------------------


async def receipt(conn: Reader, code: str, number: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT code, number, payment_id, journal_seq, check_code, face, signature, key_id,"
        " issued_at FROM receipts WHERE code = $1 AND number = $2",
        code, number,
    )


async def statement(
    conn: Reader, account_id: str, *, after_seq: int, limit: int
) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT seq, payment_id, amount, balance_after, posted_at FROM statement_lines"
        " WHERE account_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        account_id, after_seq, limit,
    )
    return rows


async def count_check(conn: Reader, code: str, number: str) -> int:
    """Record one successful check of a receipt; the new count."""
    count: int = await conn.fetchval(
        "INSERT INTO receipt_checks (code, number, verify_count, last_checked_at)"
        " VALUES ($1, $2, 1, now()) ON CONFLICT (code, number) DO UPDATE"
        " SET verify_count = receipt_checks.verify_count + 1, last_checked_at = now()"
        " RETURNING verify_count",
        code, number,
    )
    return count


async def dump_projections(conn: asyncpg.Connection) -> Mapping[str, Sequence[Any]]:
    """The projection tables as text rows in key order (for byte-for-byte comparison)."""
    return {
        "balances": [
            tuple(r) for r in await conn.fetch(
                "SELECT account_id, balance::text, currency, last_seq::text FROM balances"
                " ORDER BY account_id"
            )
        ],
        "receipts": [
            tuple(r) for r in await conn.fetch(
                "SELECT code, number, payment_id, journal_seq::text, check_code, face::text,"
                " signature, key_id, issued_at::text FROM receipts ORDER BY code, number"
            )
        ],
        "statement_lines": [
            tuple(r) for r in await conn.fetch(
                "SELECT account_id, seq::text, payment_id, amount::text, balance_after::text,"
                " posted_at::text FROM statement_lines ORDER BY account_id, seq"
            )
        ],
        "ledger_head": [
            tuple(r) for r in await conn.fetch(
                "SELECT seq::text, hash, receipt_counters::text FROM ledger_head"
            )
        ],
    }
