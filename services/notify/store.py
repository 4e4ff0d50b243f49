"""asyncpg SQL of notify: the notifications table. No clear phone or text ever lands here."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from services.notify.domain import Kind, State
from shared import polling
from shared.personal import ERASED

WAKE_CHANNEL = "yibao_notify_sms"  # shared.polling: the sender of this process


@dataclass(frozen=True)
class NewNotification:
    id: uuid.UUID
    kind: Kind
    payment_id: str
    payer_id: str
    source_event_id: uuid.UUID
    phone_masked: str
    phone_sealed: str
    text_sealed: str
    message_id: str
    payee_name: str | None = None
    refund_id: str | None = None
    # A notice for an erased person (issue 11) is stored failed, with the reason, never sent.
    state: State = "pending"
    last_error: str | None = None


@dataclass(frozen=True)
class DueNotification:
    """A claimed row, still sealed."""

    id: uuid.UUID
    kind: Kind
    payment_id: str
    payer_id: str
    source_event_id: uuid.UUID
    phone_masked: str
    phone_sealed: str
    text_sealed: str
    message_id: str
    attempts: int
    # The person key the phone is sealed under (issue 11), read with the claim: its
    # copy (still sealed), or whether it was erased; both None/False when the phone
    # needs no person key or its key is not copied here yet.
    key_sealed: str | None = None
    key_erased: bool = False


@dataclass(frozen=True)
class NotificationView:
    id: uuid.UUID
    kind: Kind
    state: State
    phone_masked: str
    attempts: int
    sent_at: datetime | None


async def insert_notifications(
    conn: asyncpg.Connection, rows: Sequence[NewNotification]
) -> set[uuid.UUID]:
    """Insert the rows in order, each unless its notice exists already (one statement);
    the ids inserted. The sender of this process is woken once ``conn`` goes back to
    its pool, its transaction over (``shared.polling``: a wake-up for notices that
    existed only costs it a look)."""
    inserted = await conn.fetch(
        "INSERT INTO notifications (id, kind, payment_id, payer_id, source_event_id,"
        " phone_masked, phone_sealed, text_sealed, message_id, payee_name, refund_id, state,"
        " last_error)"
        " SELECT i, k, p, r, s, pm, ps, t, m, pn, rf, st, le FROM unnest($1::uuid[],"
        " $2::text[], $3::text[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],"
        " $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) WITH ORDINALITY"
        " AS u(i, k, p, r, s, pm, ps, t, m, pn, rf, st, le, n) ORDER BY n"
        " ON CONFLICT DO NOTHING RETURNING id",
        [n.id for n in rows],
        [n.kind for n in rows],
        [n.payment_id for n in rows],
        [n.payer_id for n in rows],
        [n.source_event_id for n in rows],
        [n.phone_masked for n in rows],
        [n.phone_sealed for n in rows],
        [n.text_sealed for n in rows],
        [n.message_id for n in rows],
        [n.payee_name for n in rows],
        [n.refund_id for n in rows],
        [n.state for n in rows],
        [n.last_error for n in rows],
    )
    polling.after_release(conn, WAKE_CHANNEL)
    return {r["id"] for r in inserted}


async def any_due(pool: asyncpg.Pool) -> bool:
    """Whether ``claim_due`` would find a row (one statement on the due index; a row
    another sender holds counts too)."""
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM notifications"
            " WHERE state = 'pending' AND next_attempt_at <= now())"
        )
    )


async def claim_due(conn: asyncpg.Connection, limit: int) -> list[DueNotification]:
    """Lock up to ``limit`` due pending rows for this transaction; others skip them.
    Each comes with its phone's person key copy and erasure (``PersonKeyCopies.keys``
    in the same round trip): the key ids are the ``p1.<key id>.`` of the sealed phones.
    """
    rows = await conn.fetch(
        "WITH due AS MATERIALIZED (SELECT id, kind, payment_id, payer_id, source_event_id,"
        " phone_masked, phone_sealed, text_sealed, message_id, attempts, next_attempt_at,"
        " created_at, CASE WHEN phone_sealed LIKE 'p1.%' THEN split_part(phone_sealed, '.', 2)"
        " END AS key_id FROM notifications"
        " WHERE state = 'pending' AND next_attempt_at <= now()"
        " ORDER BY next_attempt_at, created_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " SELECT due.id, due.kind, due.payment_id, due.payer_id, due.source_event_id,"
        " due.phone_masked, due.phone_sealed, due.text_sealed, due.message_id, due.attempts,"
        " k.key_sealed, e.key_id IS NOT NULL AS key_erased FROM due"
        " LEFT JOIN person_keys k ON k.key_id = due.key_id"
        " LEFT JOIN person_keys_erased e ON e.key_id = due.key_id"
        " ORDER BY due.next_attempt_at, due.created_at",
        limit,
    )
    return [DueNotification(**dict(r)) for r in rows]


async def mark_sent(conn: asyncpg.Connection, sent: Sequence[tuple[uuid.UUID, int]]) -> None:
    """Mark delivered rows sent, each with its number of attempts (one statement)."""
    await conn.execute(
        "UPDATE notifications AS n SET state = 'sent', attempts = u.attempts,"
        " sent_at = clock_timestamp(), last_error = NULL"
        " FROM unnest($1::uuid[], $2::int[]) AS u(id, attempts) WHERE n.id = u.id",
        [notification_id for notification_id, _ in sent],
        [attempts for _, attempts in sent],
    )


async def record_failure(
    conn: asyncpg.Connection,
    notification_id: uuid.UUID,
    *,
    attempts: int,
    retry_in: timedelta | None,
    error: str,
) -> None:
    """Count a failed try: due again after ``retry_in`` (database clock), or ``failed``."""
    await conn.execute(
        "UPDATE notifications SET attempts = $2, last_error = $3,"
        " state = CASE WHEN $4::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
        " next_attempt_at = CASE WHEN $4::float8 IS NULL THEN next_attempt_at"
        " ELSE clock_timestamp() + make_interval(secs => $4::float8) END WHERE id = $1",
        notification_id,
        attempts,
        error[:500],
        None if retry_in is None else retry_in.total_seconds(),
    )


async def payee_of_payment(conn: asyncpg.Connection, payment_id: str) -> str | None:
    """Whom ``payment_id`` paid, as its result notice named it (None if notify never
    told of it)."""
    value = await conn.fetchval(
        "SELECT payee_name FROM notifications WHERE payment_id = $1"
        " AND kind = 'payment_result' AND payee_name IS NOT NULL LIMIT 1",
        payment_id,
    )
    return None if value is None else str(value)


async def list_for_payment(
    db: asyncpg.Pool | asyncpg.Connection, payment_id: str
) -> list[NotificationView]:
    """The notices of a payment (its refunds' included), oldest first."""
    rows = await db.fetch(
        "SELECT id, kind, state, phone_masked, attempts, sent_at FROM notifications"
        " WHERE payment_id = $1 ORDER BY created_at, id",
        payment_id,
    )
    return [NotificationView(**dict(r)) for r in rows]


async def remember_owner(conn: asyncpg.Connection, payment_id: str, caller_id: str) -> None:
    """The caller that owns ``payment_id`` (first word wins: payment decides owners)."""
    await conn.execute(
        "INSERT INTO payment_owners (payment_id, caller_id) VALUES ($1, $2)"
        " ON CONFLICT (payment_id) DO NOTHING",
        payment_id,
        caller_id,
    )


async def owner_of(db: asyncpg.Pool | asyncpg.Connection, payment_id: str) -> str | None:
    value = await db.fetchval(
        "SELECT caller_id FROM payment_owners WHERE payment_id = $1", payment_id
    )
    return None if value is None else str(value)


async def scrub_erased_phones(conn: asyncpg.Connection, key_id: str) -> None:
    """The person key ``key_id`` was erased (issue 11): the masked phones of the notices
    sealed under it are erased too; the pending ones are never sent (the sender finds
    their phone erased)."""
    await conn.execute(
        "UPDATE notifications SET phone_masked = $2"
        " WHERE phone_sealed LIKE 'p1.' || $1 || '.%' AND phone_masked <> $2",
        key_id,
        ERASED,
    )
