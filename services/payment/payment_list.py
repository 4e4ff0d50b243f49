"""The caller's side of a payment (issue 14): its ``metadata`` and ``client_reference``,
stored beside the payment (never in events), and ``GET /v1/payments``: the caller's own
payments, newest first, filtered, paged by a cursor (``starting_after``).

Another caller's payments are never listed; a filter naming another caller's payer (or
``starting_after`` naming another caller's payment) finds what an unknown one finds:
an empty list (or the same 400), so the list is no oracle for what others hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.payment import domain, store
from services.payment.schemas import PaymentPublic, public_view
from services.payment.store import RefundTotals
from shared.errors import DomainError

MAX_LIMIT = 100
DEFAULT_LIMIT = 20


async def save_caller_fields(
    conn: asyncpg.Connection,
    payment_id: str,
    *,
    metadata: dict[str, str] | None,
    client_reference: str | None,
) -> store.StoredPayment:
    """Store what the caller attached to the payment, in the transaction creating it."""
    row = await conn.fetchrow(
        "UPDATE payments SET metadata = $2, client_reference = $3 WHERE id = $1 RETURNING *",
        payment_id,
        metadata or {},
        client_reference,
    )
    assert row is not None
    return store._payment_from_row(row)


def as_utc(value: datetime | None) -> datetime | None:
    """A time without an offset is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ListFilter:
    payer_id: str | None = None
    status: domain.PublicStatus | None = None
    created_gte: datetime | None = None
    created_lt: datetime | None = None
    client_reference: str | None = None


def statuses_of(public: domain.PublicStatus) -> list[str]:
    """The stored statuses a public status covers (``processing`` is several)."""
    return [s.value for s, p in domain.PUBLIC_STATUS.items() if p == public]


async def list_payments(
    pool: asyncpg.Pool,
    *,
    caller: str,
    where: ListFilter,
    limit: int,
    starting_after: str | None,
    policy: domain.BankPolicy,
) -> tuple[list[PaymentPublic], bool]:
    """The caller's payments matching ``where``, newest first (ties by id), after the
    ``starting_after`` payment; (page, has_more)."""
    sql = ["SELECT * FROM payments WHERE caller = $1"]
    args: list[Any] = [caller]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if starting_after is not None:
        cursor = await store.get_payment(pool, starting_after, caller=caller)
        if cursor is None:
            raise DomainError(
                f"no payment {starting_after!r} for this caller to start after; pass the id"
                " of the last payment of the previous page",
                code="invalid_cursor",
                param="starting_after",
                status=400,
            )
        sql.append(f"AND (created_at, id) < ({arg(cursor.created_at)}, {arg(starting_after)})")
    if where.payer_id is not None:
        sql.append(f"AND payer_id = {arg(where.payer_id)}")
    if where.status is not None:
        sql.append(f"AND status = ANY({arg(statuses_of(where.status))}::text[])")
    if where.created_gte is not None:
        sql.append(f"AND created_at >= {arg(where.created_gte)}")
    if where.created_lt is not None:
        sql.append(f"AND created_at < {arg(where.created_lt)}")
    if where.client_reference is not None:
        sql.append(f"AND client_reference = {arg(where.client_reference)}")
    sql.append(f"ORDER BY created_at DESC, id DESC LIMIT {arg(limit + 1)}")
    rows = await pool.fetch(" ".join(sql), *args)
    page = [store._payment_from_row(r) for r in rows[:limit]]
    totals = await _refund_totals(pool, [p.payment.id for p in page])
    views = [public_view(p, totals=totals.get(p.payment.id), policy=policy) for p in page]
    return views, len(rows) > limit


async def _refund_totals(pool: asyncpg.Pool, payment_ids: list[str]) -> dict[str, RefundTotals]:
    """``store.refund_totals`` of a page of payments, in one query."""
    rows = await pool.fetch(
        "SELECT payment_id, id, amount, status FROM refunds WHERE payment_id = ANY($1::text[])"
        " ORDER BY created_at, id",
        payment_ids,
    )
    by_payment: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_payment.setdefault(row["payment_id"], []).append(row)
    return {
        pid: RefundTotals(
            committed=sum(r["amount"] for r in found if r["status"] != "failed"),
            succeeded=sum(r["amount"] for r in found if r["status"] == "succeeded"),
            refund_ids=tuple(r["id"] for r in found),
        )
        for pid, found in by_payment.items()
    }
