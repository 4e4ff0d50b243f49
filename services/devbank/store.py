"""The bank's own books: one SQLite file (WAL), one row per booking.

Every booking is committed (``synchronous=FULL``) before the bank answers, so a
``kill -9`` right after an answer loses nothing, and a crash before the commit loses
an operation that was never answered. Opening the file reads no rows: start-up time
does not grow with the books. The store is used from one thread at a time (the
bank's own worker thread), so a transaction here is never interleaved with another.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

from services.devbank.domain import Kind, Operation, Status, rfc3339

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    seq               INTEGER PRIMARY KEY,
    kind              TEXT    NOT NULL CHECK (kind IN ('debit', 'refund', 'transfer')),
    reference         TEXT    NOT NULL,
    amount_fen        INTEGER NOT NULL CHECK (amount_fen > 0),
    currency          TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('succeeded', 'declined', 'pending')),
    reason            TEXT,
    booked_at         TEXT    NOT NULL,
    clearing_day      TEXT    NOT NULL,
    related_reference TEXT,
    account           TEXT,
    refunded_fen      INTEGER NOT NULL DEFAULT 0,
    UNIQUE (kind, reference)
);
CREATE INDEX IF NOT EXISTS operations_by_day ON operations (clearing_day, seq)
    WHERE status = 'succeeded';
"""

_COLUMNS = (
    "kind, reference, amount_fen, currency, status, reason, booked_at, clearing_day,"
    " related_reference, account"
)


def _operation(row: tuple[Any, ...]) -> Operation:
    return Operation(
        kind=cast(Kind, row[0]),
        reference=row[1],
        amount_fen=row[2],
        currency=row[3],
        status=cast(Status, row[4]),
        reason=row[5],
        booked_at=datetime.fromisoformat(row[6]),
        clearing_day=date.fromisoformat(row[7]),
        related_reference=row[8],
        account=row[9],
    )


class BankStore:
    """Bookings by (kind, reference), and by clearing day for statements."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # Autocommit mode: transactions are begun explicitly (BEGIN IMMEDIATE).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            with self.transaction():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def ping(self) -> None:
        """Raises once the store is closed (``/readyz``)."""
        self._db.execute("SELECT 1")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, committed on leaving (rolled back on an error)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def find(self, kind: Kind, reference: str) -> Operation | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM operations WHERE kind = ? AND reference = ?",  # noqa: S608
            (kind, reference),
        ).fetchone()
        return _operation(row) if row is not None else None

    def refunded_fen(self, debit_reference: str) -> int:
        row = self._db.execute(
            "SELECT refunded_fen FROM operations WHERE kind = 'debit' AND reference = ?",
            (debit_reference,),
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def insert(self, op: Operation) -> None:
        self._db.execute(
            f"INSERT INTO operations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
            (
                op.kind,
                op.reference,
                op.amount_fen,
                op.currency,
                op.status,
                op.reason,
                rfc3339(op.booked_at),
                op.clearing_day.isoformat(),
                op.related_reference,
                op.account,
            ),
        )

    def add_refunded(self, debit_reference: str, amount_fen: int) -> None:
        self._db.execute(
            "UPDATE operations SET refunded_fen = refunded_fen + ?"
            " WHERE kind = 'debit' AND reference = ?",
            (amount_fen, debit_reference),
        )

    def succeeded_on(self, day: date) -> list[Operation]:
        """The day's succeeded bookings in booking order."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM operations"  # noqa: S608
            " WHERE clearing_day = ? AND status = 'succeeded' ORDER BY seq",
            (day.isoformat(),),
        ).fetchall()
        return [_operation(row) for row in rows]

    def close(self) -> None:
        self._db.close()
