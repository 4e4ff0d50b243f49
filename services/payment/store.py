"""asyncpg access to the payment database: payments and idempotency keys."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from services.payment.domain import Payment, Status
from shared.events import BeneficiaryRef, PaymentDetails, Purpose, ReceiptRef


@dataclass(frozen=True)
class StoredPayment:
    payment: Payment
    caller: str
    created_at: datetime
    updated_at: datetime


def _from_row(row: asyncpg.Record) -> StoredPayment:
    details = PaymentDetails(
        payment_id=row["id"],
        payer_id=row["payer_id"],
        payer_phone_masked=row["payer_phone_masked"],
        payer_phone_sealed=row["payer_phone_sealed"],
        beneficiary=BeneficiaryRef.model_validate(row["beneficiary"]),
        purpose=Purpose.model_validate(row["purpose"]),
        amount=row["amount"],
        currency=row["currency"],
        method=row["method"],
        payee_id=row["payee_id"],
        payee_name=row["payee_name"],
        requested_at=row["requested_at"],
    )
    receipt = row["receipt"]
    payment = Payment(
        details=details,
        status=Status(row["status"]),
        decline_code=row["decline_code"],
        decline_message=row["decline_message"],
        challenge_id=row["challenge_id"],
        verification_expires_at=row["verification_expires_at"],
        stepped_up=row["stepped_up"],
        receipt=ReceiptRef.model_validate(receipt) if receipt is not None else None,
        journal_seq=row["journal_seq"],
    )
    return StoredPayment(payment, row["caller"], row["created_at"], row["updated_at"])


async def insert_payment(
    conn: asyncpg.Connection, payment: Payment, *, caller: str
) -> StoredPayment:
    d = payment.details
    row = await conn.fetchrow(
        "INSERT INTO payments (id, caller, payer_id, status, amount, currency, method, purpose,"
        " beneficiary, payer_phone_masked, payer_phone_sealed, payee_id, payee_name,"
        " requested_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $14)"
        " RETURNING *",
        d.payment_id,
        caller,
        d.payer_id,
        payment.status.value,
        d.amount,
        d.currency,
        d.method,
        d.purpose.model_dump(mode="json"),
        d.beneficiary.model_dump(mode="json"),
        d.payer_phone_masked,
        d.payer_phone_sealed,
        d.payee_id,
        d.payee_name,
        d.requested_at,
    )
    assert row is not None
    return _from_row(row)


async def get_payment(
    conn: asyncpg.Connection | asyncpg.Pool,
    payment_id: str,
    *,
    caller: str | None = None,
    for_update: bool = False,
) -> StoredPayment | None:
    """The payment, or None; with ``caller``, only when that caller owns it."""
    sql = "SELECT * FROM payments WHERE id = $1"
    args: list[Any] = [payment_id]
    if caller is not None:
        sql += " AND caller = $2"
        args.append(caller)
    if for_update:
        sql += " FOR UPDATE"
    row = await conn.fetchrow(sql, *args)
    return _from_row(row) if row is not None else None


async def save_state(conn: asyncpg.Connection, payment: Payment) -> StoredPayment:
    """Write the mutable part of ``payment`` (its state) back."""
    row = await conn.fetchrow(
        "UPDATE payments SET status = $2, decline_code = $3, decline_message = $4,"
        " challenge_id = $5, verification_expires_at = $6, stepped_up = $7, receipt = $8,"
        " journal_seq = $9, updated_at = now() WHERE id = $1 RETURNING *",
        payment.id,
        payment.status.value,
        payment.decline_code,
        payment.decline_message,
        payment.challenge_id,
        payment.verification_expires_at,
        payment.stepped_up,
        payment.receipt.model_dump(mode="json") if payment.receipt is not None else None,
        payment.journal_seq,
    )
    if row is None:
        raise LookupError(f"payment {payment.id} vanished while being updated")
    return _from_row(row)


# ---------------------------------------------------------------------------
# Idempotency keys
# ---------------------------------------------------------------------------

ClaimOutcome = Literal["owned", "replay", "reused", "in_flight"]


@dataclass(frozen=True)
class KeyClaim:
    """What claiming an idempotency key found (``claim_key``)."""

    outcome: ClaimOutcome
    response_status: int | None = None
    response_body: str | None = None  # the exact JSON text first sent


async def claim_key(
    conn: asyncpg.Connection,
    *,
    caller: str,
    key: str,
    request_hash: str,
    owner: uuid.UUID,
    ttl: timedelta,
    takeover_after: timedelta,
) -> KeyClaim:
    """Claim (caller, key) for this request in its own short transaction.

    ``owned``: go ahead. ``replay``: answer the stored response. ``reused``: the key
    came with another body. ``in_flight``: the first request is still running. An
    in-flight claim older than ``takeover_after`` (its owner crashed) is taken over; an
    expired key is reused as new.
    """
    for _ in range(3):
        # A new key (the common case) is one autocommitted statement.
        inserted = await conn.fetchval(
            "INSERT INTO idempotency_keys (caller, idem_key, request_hash, state, owner,"
            " expires_at) VALUES ($1, $2, $3, 'in_flight', $4, now() + $5)"
            " ON CONFLICT DO NOTHING RETURNING true",
            caller,
            key,
            request_hash,
            owner,
            ttl,
        )
        if inserted:
            return KeyClaim("owned")
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT request_hash, state, response_status, response_body,"
                " expires_at <= now() AS expired, locked_at < now() - $3::interval AS stale"
                " FROM idempotency_keys WHERE caller = $1 AND idem_key = $2 FOR UPDATE",
                caller,
                key,
                takeover_after,
            )
            if row is None:
                continue  # purged between the two statements: claim again
            if row["expired"]:
                await _reclaim(conn, caller, key, owner, request_hash, ttl)
                return KeyClaim("owned")
            if row["request_hash"] != request_hash:
                return KeyClaim("reused")
            if row["state"] == "done":
                return KeyClaim("replay", row["response_status"], row["response_body"])
            if row["stale"]:
                await _reclaim(conn, caller, key, owner, request_hash, ttl)
                return KeyClaim("owned")
            return KeyClaim("in_flight")
    raise RuntimeError("idempotency key kept vanishing while being claimed")


async def _reclaim(
    conn: asyncpg.Connection,
    caller: str,
    key: str,
    owner: uuid.UUID,
    request_hash: str,
    ttl: timedelta,
) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET state = 'in_flight', owner = $3, request_hash = $4,"
        " payment_id = NULL, response_status = NULL, response_body = NULL,"
        " locked_at = now(), created_at = now(), expires_at = now() + $5::interval"
        " WHERE caller = $1 AND idem_key = $2",
        caller,
        key,
        owner,
        request_hash,
        ttl,
    )


async def finish_key(
    conn: asyncpg.Connection,
    *,
    caller: str,
    key: str,
    owner: uuid.UUID,
    payment_id: str,
    response_status: int,
    response_body: str,
) -> bool:
    """Store the answer, inside the transaction that did the work; False if no longer ours."""
    done = await conn.fetchval(
        "UPDATE idempotency_keys SET state = 'done', payment_id = $4, response_status = $5,"
        " response_body = $6 WHERE caller = $1 AND idem_key = $2 AND owner = $3"
        " AND state = 'in_flight' RETURNING true",
        caller,
        key,
        owner,
        payment_id,
        response_status,
        response_body,
    )
    return bool(done)


async def release_key(
    conn: asyncpg.Connection | asyncpg.Pool, *, caller: str, key: str, owner: uuid.UUID
) -> None:
    """Give a claim back after a failure, so the caller can retry at once."""
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE caller = $1 AND idem_key = $2 AND owner = $3"
        " AND state = 'in_flight'",
        caller,
        key,
        owner,
    )


async def purge_keys(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Delete expired idempotency keys; returns how many."""
    status = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
    return int(status.split()[-1])
