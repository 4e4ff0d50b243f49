"""SQL of settlement: closed days, transfers, reconciliations, and the journal reads
they need. Reads return frozen dataclasses or the journal's own entry models."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from services.ledger.domain.clearing import entry_clearing_day
from services.ledger.domain.settlement import Transfer
from services.ledger.store import Reader
from shared.events import (
    BankStatementReconciled,
    ClearingDayClosed,
    JournalEntryPosted,
    StatementDiscrepancy,
)


@dataclass(frozen=True)
class ClosedDay:
    day: date
    closed_at: datetime
    forced: bool
    closed: ClearingDayClosed


@dataclass(frozen=True)
class TransferRow:
    transfer: Transfer
    status: str  # pending | arrived
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    arrived_at: datetime | None
    arrival_seq: int | None


@dataclass(frozen=True)
class DayEntry:
    """A journal entry of a clearing day with its receipt face (if any)."""

    entry: JournalEntryPosted
    face: Mapping[str, Any] | None


def _closed(row: Any) -> ClosedDay:
    return ClosedDay(
        day=row["day"],
        closed_at=row["closed_at"],
        forced=row["forced"],
        closed=ClearingDayClosed.model_validate(row["closed"]),
    )


async def closed_day(conn: Reader, day: date) -> ClosedDay | None:
    row = await conn.fetchrow(
        "SELECT day, closed_at, forced, closed FROM clearing_days WHERE day = $1", day
    )
    return _closed(row) if row is not None else None


async def closed_days_before(conn: Reader, day: date) -> list[ClosedDay]:
    rows = await conn.fetch(
        "SELECT day, closed_at, forced, closed FROM clearing_days WHERE day < $1 ORDER BY day",
        day,
    )
    return [_closed(r) for r in rows]


async def carried_deficits(conn: Reader, before: date) -> dict[str, int]:
    """Each region's deficit carried out of its latest close before ``before``."""
    carried: dict[str, int] = {}
    for closed in await closed_days_before(conn, before):
        for region in closed.closed.regions:
            carried[region.region] = region.carried_out
    return {r: v for r, v in carried.items() if v}


async def insert_closed_day(
    conn: asyncpg.Connection, closed: ClearingDayClosed, event_id: uuid.UUID
) -> None:
    await conn.execute(
        "INSERT INTO clearing_days (day, closed_at, forced, event_id, closed)"
        " VALUES ($1, $2, $3, $4, $5)",
        date.fromisoformat(closed.day),
        closed.closed_at,
        closed.forced,
        event_id,
        closed.model_dump(mode="json"),
    )


async def days_to_close(conn: Reader, before: date, since: date | None = None) -> list[date]:
    """Open clearing days before ``before`` (and from ``since``) that have postings."""
    rows = await conn.fetch(
        "SELECT DISTINCT j.clearing_day FROM journal j WHERE j.clearing_day < $1"
        " AND ($2::date IS NULL OR j.clearing_day >= $2)"
        " AND NOT EXISTS (SELECT 1 FROM clearing_days c WHERE c.day = j.clearing_day)"
        " ORDER BY 1",
        before,
        since,
    )
    return [r[0] for r in rows]


async def entries_of_day(conn: Reader, day: date) -> list[DayEntry]:
    """The premiums and refunds posted to clearing day ``day``, in journal order."""
    rows = await conn.fetch(
        "SELECT entry, receipt_event FROM journal WHERE clearing_day = $1"
        " AND kind IN ('premium', 'refund') ORDER BY seq",
        day,
    )
    return [
        DayEntry(
            JournalEntryPosted.model_validate(r["entry"]),
            dict(r["receipt_event"]["receipt"]) if r["receipt_event"] else None,
        )
        for r in rows
    ]


async def payment_days(conn: Reader, payment_ids: Iterable[str]) -> dict[str, str]:
    """The clearing day of each payment's own entry (for a refund's ``payment_day``)."""
    rows = await conn.fetch(
        "SELECT payment_id, entry FROM journal WHERE payment_id = ANY($1::text[])"
        " AND refund_id IS NULL",
        list(set(payment_ids)),
    )
    return {
        r["payment_id"]: entry_clearing_day(
            JournalEntryPosted.model_validate(r["entry"])
        ).isoformat()
        for r in rows
    }


async def bank_confirmed_entries(
    conn: Reader, start: datetime, end: datetime, references: Iterable[str]
) -> list[JournalEntryPosted]:
    """Entries the bank confirmed in [start, end), and any naming ``references``."""
    rows = await conn.fetch(
        "SELECT entry FROM journal WHERE bank_confirmed_at IS NOT NULL AND"
        " ((bank_confirmed_at >= $1 AND bank_confirmed_at < $2)"
        " OR entry ->> 'bank_reference' = ANY($3::text[])) ORDER BY seq",
        start,
        end,
        list(set(references)),
    )
    return [JournalEntryPosted.model_validate(r["entry"]) for r in rows]


# ---------------------------------------------------------------------------
# Transfers
# ---------------------------------------------------------------------------

_TRANSFER = (
    "SELECT reference, day, region, bank, to_account, amount, status, attempts,"
    " next_attempt_at, last_error, arrived_at, arrival_seq FROM settlement_transfers"
)


def _transfer(row: Any) -> TransferRow:
    return TransferRow(
        transfer=Transfer(
            reference=row["reference"],
            day=row["day"],
            region=row["region"],
            bank=row["bank"],
            to_account=row["to_account"],
            amount=row["amount"],
        ),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        arrived_at=row["arrived_at"],
        arrival_seq=row["arrival_seq"],
    )


async def insert_transfers(conn: asyncpg.Connection, transfers: Iterable[Transfer]) -> None:
    await conn.executemany(
        "INSERT INTO settlement_transfers (reference, day, region, bank, to_account, amount)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(t.reference, t.day, t.region, t.bank, t.to_account, t.amount) for t in transfers],
    )


async def transfers_of_day(conn: Reader, day: date) -> list[TransferRow]:
    rows = await conn.fetch(_TRANSFER + " WHERE day = $1 ORDER BY region", day)
    return [_transfer(r) for r in rows]


async def transfer_for_update(conn: asyncpg.Connection, reference: str) -> TransferRow | None:
    row = await conn.fetchrow(_TRANSFER + " WHERE reference = $1 FOR UPDATE", reference)
    return _transfer(row) if row is not None else None


async def lease_due_transfer(pool: asyncpg.Pool, lease_seconds: float) -> TransferRow | None:
    """Claim the most overdue pending transfer for ``lease_seconds`` (one autocommitted
    statement: no transaction stays open while the bank is asked)."""
    row = await pool.fetchrow(
        "UPDATE settlement_transfers SET attempts = attempts + 1,"
        " next_attempt_at = now() + make_interval(secs => $1)"
        " WHERE reference = (SELECT reference FROM settlement_transfers"
        "   WHERE status = 'pending' AND next_attempt_at <= now()"
        "   ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " RETURNING reference, day, region, bank, to_account, amount, status, attempts,"
        " next_attempt_at, last_error, arrived_at, arrival_seq",
        lease_seconds,
    )
    return _transfer(row) if row is not None else None


async def record_transfer_failure(
    pool: asyncpg.Pool, reference: str, error: str, retry_in_seconds: float
) -> None:
    await pool.execute(
        "UPDATE settlement_transfers SET last_error = $2,"
        " next_attempt_at = now() + make_interval(secs => $3)"
        " WHERE reference = $1 AND status = 'pending'",
        reference,
        error[:500],
        retry_in_seconds,
    )


async def mark_arrived(
    conn: asyncpg.Connection, reference: str, arrived_at: datetime, seq: int
) -> None:
    await conn.execute(
        "UPDATE settlement_transfers SET status = 'arrived', arrived_at = $2,"
        " arrival_seq = $3, last_error = NULL WHERE reference = $1",
        reference,
        arrived_at,
        seq,
    )


# ---------------------------------------------------------------------------
# Reconciliations
# ---------------------------------------------------------------------------


async def insert_reconciliation(
    conn: asyncpg.Connection, event_id: uuid.UUID, outcome: BankStatementReconciled
) -> bool:
    """Record an outcome once; False when the same outcome was recorded before."""
    done = await conn.fetchval(
        "INSERT INTO reconciliations (event_id, day, statement_sha256, reconciled_at, outcome)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING RETURNING true",
        event_id,
        date.fromisoformat(outcome.day),
        outcome.statement_sha256,
        outcome.reconciled_at,
        outcome.model_dump(mode="json", exclude={"statement"}),
    )
    return bool(done)


async def discrepancies_before(
    conn: Reader, day: date
) -> list[tuple[date, list[StatementDiscrepancy]]]:
    """What the reconciliations of days before ``day`` found, in the order recorded."""
    rows = await conn.fetch(
        "SELECT day, outcome -> 'discrepancies' AS found FROM reconciliations"
        " WHERE day < $1 ORDER BY reconciled_at, event_id",
        day,
    )
    return [
        (row["day"], [StatementDiscrepancy.model_validate(d) for d in row["found"] or []])
        for row in rows
    ]
