"""asyncpg access to the payment database: payments, idempotency keys, payers,
refunds, bank calls, allocations, payer codes and family bindings. Reads return frozen
dataclasses."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

import asyncpg

from services.payment.domain import Payment, Status
from services.payment.payer_code_domain import PayerCode
from services.payment.premium_domain import PremiumSlot
from services.payment.refund_domain import Refund, RefundStatus
from shared import polling
from shared.events import BankConfirmation, BeneficiaryRef, PaymentDetails, Purpose, ReceiptRef

BANK_CALLS_CHANNEL = "yibao_bank_calls"  # shared.polling: the bank worker of this process


@dataclass(frozen=True)
class StoredPayment:
    payment: Payment
    caller: str
    created_at: datetime
    updated_at: datetime
    # The caller's own fields (issue 14; migration 0008): never in events.
    metadata: dict[str, str] = field(default_factory=dict)
    client_reference: str | None = None


def _payment_from_row(row: asyncpg.Record) -> StoredPayment:
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
        payer_id_hash=row["payer_id_hash"],
        caller_id=row["caller"],
    )
    receipt = row["receipt"]
    bank_debit = row["bank_debit"]
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
        bank_debit=BankConfirmation.model_validate(bank_debit) if bank_debit else None,
        posted_at=row["posted_at"],
    )
    return StoredPayment(
        payment,
        row["caller"],
        row["created_at"],
        row["updated_at"],
        metadata=dict(row.get("metadata") or {}),
        client_reference=row.get("client_reference"),
    )


async def insert_payment(
    conn: asyncpg.Connection,
    payment: Payment,
    *,
    caller: str,
    premium_slot: PremiumSlot | None = None,
) -> StoredPayment:
    """Insert the payment; a premium's slot is held from here (see ``premium_slot_holder``).

    The stored payment is built from what was written (created and updated at
    ``requested_at``), not read back."""
    d = payment.details
    slot = premium_slot
    await conn.execute(
        "INSERT INTO payments (id, caller, payer_id, status, amount, currency, method, purpose,"
        " beneficiary, payer_phone_masked, payer_phone_sealed, payee_id, payee_name,"
        " requested_at, payer_id_hash, premium_slot, premium_first_month,"
        " premium_last_month, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,"
        " $18, $14, $14)",
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
        d.payer_id_hash,
        slot.key if slot is not None else None,
        slot.first_month if slot is not None else None,
        slot.last_month if slot is not None else None,
    )
    return StoredPayment(payment, caller, d.requested_at, d.requested_at)


@dataclass(frozen=True)
class SlotHolder:
    """A live payment (not declined nor failed) holding a premium slot."""

    payment_id: str
    status: Status
    period: str


async def premium_slot_holder(conn: asyncpg.Connection, slot: PremiumSlot) -> SlotHolder | None:
    """Lock ``slot`` for the rest of this transaction, then the live payment overlapping
    it, if any.

    The lock is a transaction-scoped advisory lock on the slot key: a second request
    for the same slot waits here until the first commits (and then sees its payment)
    or rolls back. Call it in the transaction that inserts the payment; a declined or
    failed payment no longer holds its slot.
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", slot.key)
    row = await conn.fetchrow(
        "SELECT id, status, purpose ->> 'period' AS period FROM payments"
        " WHERE premium_slot = $1 AND status NOT IN ('declined', 'failed')"
        " AND premium_first_month <= $3 AND premium_last_month >= $2"
        " ORDER BY created_at LIMIT 1",
        slot.key,
        slot.first_month,
        slot.last_month,
    )
    if row is None:
        return None
    return SlotHolder(row["id"], Status(row["status"]), row["period"])


async def get_payment(
    conn: asyncpg.Connection | asyncpg.Pool,
    payment_id: str,
    *,
    caller: str | None = None,
    for_update: bool = False,
) -> StoredPayment | None:
    """The payment, or None; with ``caller``, only when that caller owns it."""
    row = await _fetch_owned(conn, "payments", payment_id, caller, for_update)
    return _payment_from_row(row) if row is not None else None


async def lock_payments(
    conn: asyncpg.Connection, payment_ids: list[str]
) -> dict[str, StoredPayment]:
    """The payments ``payment_ids`` that exist, locked FOR UPDATE in id order (two
    transactions locking overlapping sets never wait on each other in a cycle)."""
    rows = await conn.fetch(
        "SELECT * FROM payments WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        sorted(set(payment_ids)),
    )
    return {r["id"]: _payment_from_row(r) for r in rows}


async def _fetch_owned(
    conn: asyncpg.Connection | asyncpg.Pool,
    table: Literal["payments", "refunds"],
    row_id: str,
    caller: str | None,
    for_update: bool,
) -> asyncpg.Record | None:
    """The row ``row_id`` of ``table``; with ``caller``, only when that caller owns it."""
    sql = f"SELECT * FROM {table} WHERE id = $1"  # noqa: S608 - table is one of two literals
    args: list[Any] = [row_id]
    if caller is not None:
        sql += " AND caller = $2"
        args.append(caller)
    if for_update:
        sql += " FOR UPDATE"
    return await conn.fetchrow(sql, *args)


_SAVE_STATE = (
    "UPDATE payments SET status = $2, decline_code = $3, decline_message = $4,"
    " challenge_id = $5, verification_expires_at = $6, stepped_up = $7, receipt = $8,"
    " journal_seq = $9, bank_debit = $10, posted_at = $11, updated_at = now()"
    " WHERE id = $1 RETURNING updated_at"
)

# The same, and the payment's bank debit staged (a no-op if it exists), in one statement.
_SAVE_STATE_AND_DEBIT = (
    "WITH saved AS ("  # noqa: S608 - constant text
    + _SAVE_STATE
    + "), debit AS (INSERT INTO bank_calls (reference, kind,"
    " payment_id, payer_ref, amount, state) SELECT $1, 'debit', $1, $12, $13, 'calling'"
    " FROM saved ON CONFLICT (reference) DO NOTHING) SELECT updated_at FROM saved"
)


async def save_state(
    conn: asyncpg.Connection,
    payment: Payment,
    *,
    stored: StoredPayment | None = None,
    stage_debit: bool = False,
) -> StoredPayment:
    """Write the mutable part of ``payment`` (its state) back. With ``stored`` (the row
    as read, locked, in this transaction) the result is built from it instead of read
    back. With ``stage_debit``, the payment's bank debit (reference: the payment id) is
    staged in the same statement, as ``insert_bank_call`` would."""
    args: list[Any] = [
        payment.id,
        payment.status.value,
        payment.decline_code,
        payment.decline_message,
        payment.challenge_id,
        payment.verification_expires_at,
        payment.stepped_up,
        payment.receipt.model_dump(mode="json") if payment.receipt is not None else None,
        payment.journal_seq,
        payment.bank_debit.model_dump(mode="json") if payment.bank_debit is not None else None,
        payment.posted_at,
    ]
    sql = _SAVE_STATE
    if stage_debit:
        sql = _SAVE_STATE_AND_DEBIT
        args += [payment.details.payer_id, payment.details.amount]
    if stored is None:
        sql = sql.replace("RETURNING updated_at", "RETURNING *").replace(
            "SELECT updated_at FROM saved", "SELECT * FROM saved"
        )
        row = await conn.fetchrow(sql, *args)
        if row is None:
            raise LookupError(f"payment {payment.id} vanished while being updated")
        return _payment_from_row(row)
    updated_at = await conn.fetchval(sql, *args)
    if updated_at is None:
        raise LookupError(f"payment {payment.id} vanished while being updated")
    return replace(stored, payment=payment, updated_at=updated_at)


# ---------------------------------------------------------------------------
# Idempotency keys
# ---------------------------------------------------------------------------

KeyOutcome = Literal["new", "reclaim", "replay", "reused", "in_flight"]


@dataclass(frozen=True)
class KeyLook:
    """What ``lock_key`` found for (caller, key), inside the request's transaction."""

    outcome: KeyOutcome
    response_status: int | None = None
    response_body: str | None = None  # the exact JSON text first sent


def key_lock_id(caller: str, key: str) -> int:
    """The advisory lock of (caller, key): a signed 64-bit hash, length-prefixed so no
    two pairs spell the same text."""
    text = f"{len(caller)}:{caller}:{key}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


async def lock_key(
    conn: asyncpg.Connection,
    *,
    caller: str,
    key: str,
    request_hash: str,
    takeover_after: timedelta,
) -> KeyLook:
    """Try the key's transaction-scoped advisory lock and read its row, in one statement
    of the request's own transaction.

    ``new``: no row (or an expired one: ``reclaim``) and the lock is ours: do the work,
    then ``save_key``. ``replay``: answer the stored response (whoever holds the lock).
    ``reused``: the key came with another body. ``in_flight``: another transaction holds
    the lock (the first request is running), or a row claimed ``in_flight`` by a version
    of this service that claimed keys in a transaction of their own is younger than
    ``takeover_after`` (an older one is reclaimed: its owner crashed).
    """
    row = await conn.fetchrow(
        "SELECT l.locked, k.request_hash, k.state, k.response_status, k.response_body,"
        " k.expires_at <= now() AS expired, k.locked_at < now() - $4::interval AS stale"
        " FROM (SELECT pg_try_advisory_xact_lock($3::bigint) AS locked) AS l"
        " LEFT JOIN idempotency_keys k ON k.caller = $1 AND k.idem_key = $2",
        caller,
        key,
        key_lock_id(caller, key),
        takeover_after,
    )
    assert row is not None
    locked = bool(row["locked"])
    if row["request_hash"] is None:
        return KeyLook("new" if locked else "in_flight")
    if row["expired"]:
        return KeyLook("reclaim" if locked else "in_flight")
    if row["request_hash"] != request_hash:
        return KeyLook("reused")
    if row["state"] == "done":
        return KeyLook("replay", row["response_status"], row["response_body"])
    return KeyLook("reclaim" if locked and row["stale"] else "in_flight")


async def save_key(
    conn: asyncpg.Connection,
    *,
    caller: str,
    key: str,
    request_hash: str,
    payment_id: str,
    response_status: int,
    response_body: str,
    ttl: timedelta,
    takeover_after: timedelta,
) -> bool:
    """Store the answer in the transaction that did the work (after ``lock_key`` said
    ``new`` or ``reclaim``). False when a live answer or claim is there after all (one
    committed between ``lock_key``'s snapshot and its lock, or an older version's
    claim): roll back and look again."""
    stored = await conn.fetchval(
        "INSERT INTO idempotency_keys AS k (caller, idem_key, request_hash, state, owner,"
        " payment_id, response_status, response_body, expires_at)"
        " VALUES ($1, $2, $3, 'done', $4, $5, $6, $7, now() + $8::interval)"
        " ON CONFLICT (caller, idem_key) DO UPDATE SET request_hash = EXCLUDED.request_hash,"
        " state = 'done', owner = EXCLUDED.owner, payment_id = EXCLUDED.payment_id,"
        " response_status = EXCLUDED.response_status, response_body = EXCLUDED.response_body,"
        " locked_at = now(), created_at = now(), expires_at = EXCLUDED.expires_at"
        " WHERE k.expires_at <= now()"
        " OR (k.state = 'in_flight' AND k.locked_at < now() - $9::interval)"
        " RETURNING true",
        caller,
        key,
        request_hash,
        uuid.uuid4(),
        payment_id,
        response_status,
        response_body,
        ttl,
        takeover_after,
    )
    return bool(stored)


async def purge_keys(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    """Delete expired idempotency keys; returns how many."""
    status = await conn.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
    return int(status.split()[-1])


# ---------------------------------------------------------------------------
# Payers (owned by the caller that enrolled them)
# ---------------------------------------------------------------------------

_PAYER_COLUMNS = (
    "payer_id, caller, phone_masked, phone_sealed, phone_sealed_for, id_number_hash,"
    " id_number_masked, name, created_at"
)


@dataclass(frozen=True)
class Payer:
    """An enrolled payer. Only ``caller`` may act on it or read it."""

    payer_id: str
    caller: str
    phone_masked: str
    phone_sealed: str  # sealed with phone_aad(phone_sealed_for)
    phone_sealed_for: str  # the first payment's id, or the enrolment id ("py_…")
    id_number_hash: str | None  # keyed hash of the ID number: the person, for the cap
    id_number_masked: str | None
    name: str | None
    created_at: datetime


def _payer_from_row(row: asyncpg.Record) -> Payer:
    return Payer(**dict(row))


async def get_payer(
    conn: asyncpg.Connection | asyncpg.Pool, payer_id: str, *, for_update: bool = False
) -> Payer | None:
    row = await conn.fetchrow(
        f"SELECT {_PAYER_COLUMNS} FROM payers WHERE payer_id = $1"  # noqa: S608
        + (" FOR UPDATE" if for_update else ""),
        payer_id,
    )
    return _payer_from_row(row) if row is not None else None


async def enroll_payer(
    conn: asyncpg.Connection, payer: Payer, *, first_payment_id: str | None
) -> Payer:
    """Enroll ``payer`` unless its id is taken; the payer as stored, locked (whoever
    enrolled it first: compare ``caller``)."""
    # A new payer (the common case) is one statement: the row this insert made is ours
    # until the transaction ends, as a locked one would be.
    row = await conn.fetchrow(
        "INSERT INTO payers (payer_id, caller, first_payment_id, phone_masked, phone_sealed,"  # noqa: S608
        " phone_sealed_for, id_number_hash, id_number_masked, name)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (payer_id) DO NOTHING"
        f" RETURNING {_PAYER_COLUMNS}",
        payer.payer_id,
        payer.caller,
        first_payment_id,
        payer.phone_masked,
        payer.phone_sealed,
        payer.phone_sealed_for,
        payer.id_number_hash,
        payer.id_number_masked,
        payer.name,
    )
    if row is not None:
        return _payer_from_row(row)
    stored = await get_payer(conn, payer.payer_id, for_update=True)
    assert stored is not None  # payers are never deleted
    return stored


async def complete_payer_identity(
    conn: asyncpg.Connection,
    payer_id: str,
    *,
    id_number_hash: str,
    id_number_masked: str,
    name: str,
) -> Payer:
    """Record who the payer is when it was not known yet (an ID once set stays)."""
    row = await conn.fetchrow(
        "UPDATE payers SET id_number_hash = COALESCE(id_number_hash, $2),"  # noqa: S608
        " id_number_masked = COALESCE(id_number_masked, $3), name = COALESCE(name, $4),"
        f" updated_at = now() WHERE payer_id = $1 RETURNING {_PAYER_COLUMNS}",
        payer_id,
        id_number_hash,
        id_number_masked,
        name,
    )
    if row is None:
        raise LookupError(f"payer {payer_id} vanished while being updated")
    return _payer_from_row(row)


# ---------------------------------------------------------------------------
# Refunds
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredRefund:
    refund: Refund
    caller: str
    created_at: datetime
    updated_at: datetime


def _refund_from_row(row: asyncpg.Record) -> StoredRefund:
    bank, receipt = row["bank_refund"], row["receipt"]
    refund = Refund(
        id=row["id"],
        payment_id=row["payment_id"],
        amount=row["amount"],
        reason=row["reason"],
        status=RefundStatus(row["status"]),
        bank_refund=BankConfirmation.model_validate(bank) if bank else None,
        receipt=ReceiptRef.model_validate(receipt) if receipt else None,
        journal_seq=row["journal_seq"],
        decline_code=row["decline_code"],
        decline_message=row["decline_message"],
    )
    return StoredRefund(refund, row["caller"], row["created_at"], row["updated_at"])


async def insert_refund(conn: asyncpg.Connection, refund: Refund, *, caller: str) -> StoredRefund:
    row = await conn.fetchrow(
        "INSERT INTO refunds (id, payment_id, caller, amount, reason, status)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
        refund.id,
        refund.payment_id,
        caller,
        refund.amount,
        refund.reason,
        refund.status.value,
    )
    assert row is not None
    return _refund_from_row(row)


async def get_refund(
    conn: asyncpg.Connection | asyncpg.Pool,
    refund_id: str,
    *,
    caller: str | None = None,
    for_update: bool = False,
) -> StoredRefund | None:
    """The refund, or None; with ``caller``, only when that caller owns it."""
    row = await _fetch_owned(conn, "refunds", refund_id, caller, for_update)
    return _refund_from_row(row) if row is not None else None


async def save_refund(conn: asyncpg.Connection, refund: Refund) -> StoredRefund:
    row = await conn.fetchrow(
        "UPDATE refunds SET status = $2, bank_refund = $3, receipt = $4, journal_seq = $5,"
        " decline_code = $6, decline_message = $7, updated_at = now() WHERE id = $1"
        " RETURNING *",
        refund.id,
        refund.status.value,
        refund.bank_refund.model_dump(mode="json") if refund.bank_refund else None,
        refund.receipt.model_dump(mode="json") if refund.receipt else None,
        refund.journal_seq,
        refund.decline_code,
        refund.decline_message,
    )
    if row is None:
        raise LookupError(f"refund {refund.id} vanished while being updated")
    return _refund_from_row(row)


@dataclass(frozen=True)
class RefundTotals:
    committed: int  # succeeded + in flight: what the refund limit counts
    succeeded: int  # what ``refunded_amount`` shows
    refund_ids: tuple[str, ...]


async def refund_totals(conn: asyncpg.Connection | asyncpg.Pool, payment_id: str) -> RefundTotals:
    rows = await conn.fetch(
        "SELECT id, amount, status FROM refunds WHERE payment_id = $1 ORDER BY created_at, id",
        payment_id,
    )
    committed = sum(r["amount"] for r in rows if r["status"] != "failed")
    succeeded = sum(r["amount"] for r in rows if r["status"] == "succeeded")
    return RefundTotals(committed, succeeded, tuple(r["id"] for r in rows))


# ---------------------------------------------------------------------------
# Bank calls (durable; the worker leases them by pushing next_attempt_at forward)
# ---------------------------------------------------------------------------

BankCallKind = Literal["debit", "refund", "reversal"]
BankCallState = Literal["calling", "watching", "done"]


@dataclass(frozen=True)
class BankCall:
    reference: str
    kind: BankCallKind
    payment_id: str
    refund_id: str | None
    debit_reference: str | None
    payer_ref: str
    amount: int
    state: BankCallState
    attempts: int
    watch_until: datetime | None
    created_at: datetime


def _bank_call_from_row(row: asyncpg.Record) -> BankCall:
    return BankCall(
        reference=row["reference"],
        kind=row["kind"],
        payment_id=row["payment_id"],
        refund_id=row["refund_id"],
        debit_reference=row["debit_reference"],
        payer_ref=row["payer_ref"],
        amount=row["amount"],
        state=row["state"],
        attempts=row["attempts"],
        watch_until=row["watch_until"],
        created_at=row["created_at"],
    )


async def insert_bank_call(
    conn: asyncpg.Connection,
    *,
    reference: str,
    kind: BankCallKind,
    payment_id: str,
    payer_ref: str,
    amount: int,
    refund_id: str | None = None,
    debit_reference: str | None = None,
) -> None:
    """Stage a bank call in the caller's transaction (a no-op if it exists); the bank
    worker of this process is woken once ``conn`` goes back to its pool, the
    transaction over (``shared.polling``)."""
    await conn.execute(
        "INSERT INTO bank_calls (reference, kind, payment_id, refund_id, debit_reference,"
        " payer_ref, amount, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'calling')"
        " ON CONFLICT (reference) DO NOTHING",
        reference,
        kind,
        payment_id,
        refund_id,
        debit_reference,
        payer_ref,
        amount,
    )
    polling.after_release(conn, BANK_CALLS_CHANNEL)


async def lease_bank_calls(pool: asyncpg.Pool, *, limit: int, lease: timedelta) -> list[BankCall]:
    """Claim due calls for ``lease`` (one autocommitted statement, SKIP LOCKED); a call
    whose worker died is due again when its lease runs out."""
    rows = await pool.fetch(
        "UPDATE bank_calls SET next_attempt_at = now() + $2::interval, updated_at = now()"
        " WHERE reference IN (SELECT reference FROM bank_calls WHERE state <> 'done'"
        " AND next_attempt_at <= now() ORDER BY next_attempt_at LIMIT $1"
        " FOR UPDATE SKIP LOCKED) RETURNING *",
        limit,
        lease,
    )
    return [_bank_call_from_row(r) for r in rows]


_RECORD_ANSWER = (
    "UPDATE bank_calls SET state = $2, last_answer = $3, attempts = attempts + 1,"
    " next_attempt_at = now() + COALESCE($4::interval, interval '0'),"
    " watch_until = COALESCE($5, watch_until), updated_at = now()"
    " WHERE reference = $1 AND state = $6 AND attempts = $7"
)


def _answer_args(
    call: BankCall,
    state: BankCallState,
    answer: str,
    retry_in: timedelta | None,
    watch_until: datetime | None,
) -> list[Any]:
    return [call.reference, state, answer, retry_in, watch_until, call.state, call.attempts]


async def record_bank_answer(
    conn: asyncpg.Connection,
    call: BankCall,
    *,
    state: BankCallState,
    answer: str,
    retry_in: timedelta | None = None,
    watch_until: datetime | None = None,
) -> bool:
    """Record an answer to ``call`` as leased, in the caller's transaction, locking the
    row; False (nothing written) when another worker recorded one since the lease (a
    lease that ran out while this worker waited for the bank)."""
    recorded = await conn.fetchval(
        _RECORD_ANSWER + " RETURNING true",
        *_answer_args(call, state, answer, retry_in, watch_until),
    )
    return bool(recorded)


async def record_debit_answer(
    conn: asyncpg.Connection,
    call: BankCall,
    *,
    state: BankCallState,
    answer: str,
    retry_in: timedelta | None = None,
    watch_until: datetime | None = None,
) -> StoredPayment | None:
    """``record_bank_answer`` for a debit, and its payment locked (FOR UPDATE) and read,
    in one statement: the call's row first, then the payment's (the order of every bank
    answer). None when another worker recorded an answer since the lease."""
    row = await conn.fetchrow(
        "WITH answered AS (" + _RECORD_ANSWER + " RETURNING payment_id)"  # noqa: S608
        " SELECT p.* FROM answered JOIN payments p ON p.id = answered.payment_id"
        " FOR UPDATE OF p",
        *_answer_args(call, state, answer, retry_in, watch_until),
    )
    return _payment_from_row(row) if row is not None else None


async def lock_bank_call(conn: asyncpg.Connection, reference: str) -> BankCall | None:
    row = await conn.fetchrow("SELECT * FROM bank_calls WHERE reference = $1 FOR UPDATE", reference)
    return _bank_call_from_row(row) if row is not None else None


async def update_bank_call(
    conn: asyncpg.Connection | asyncpg.Pool,
    reference: str,
    *,
    state: BankCallState,
    answer: str | None,
    retry_in: timedelta | None = None,
    watch_until: datetime | None = None,
    expect_attempts: int | None = None,
) -> None:
    """Record an answer: the new state, and when to try again (``retry_in``). With
    ``expect_attempts``, only if no other answer was recorded meanwhile."""
    await conn.execute(
        "UPDATE bank_calls SET state = $2, last_answer = $3, attempts = attempts + 1,"
        " next_attempt_at = now() + COALESCE($4::interval, interval '0'),"
        " watch_until = COALESCE($5, watch_until), updated_at = now()"
        " WHERE reference = $1 AND ($6::int IS NULL OR attempts = $6)",
        reference,
        state,
        answer,
        retry_in,
        watch_until,
        expect_attempts,
    )


# ---------------------------------------------------------------------------
# Allocations (个账划入)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    allocation_id: str
    region: str
    period: str
    payer_id: str
    amount: int


async def insert_allocation(
    conn: asyncpg.Connection, allocation: Allocation, *, caller: str
) -> Allocation:
    """Insert the line, or return the one already stored for (region, period, payer)."""
    a = allocation
    row = await conn.fetchrow(
        "INSERT INTO allocations (region, period, payer_id, allocation_id, amount, caller)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (region, period, payer_id) DO NOTHING"
        " RETURNING allocation_id, region, period, payer_id, amount",
        a.region,
        a.period,
        a.payer_id,
        a.allocation_id,
        a.amount,
        caller,
    )
    if row is None:
        row = await conn.fetchrow(
            "SELECT allocation_id, region, period, payer_id, amount FROM allocations"
            " WHERE region = $1 AND period = $2 AND payer_id = $3",
            a.region,
            a.period,
            a.payer_id,
        )
    assert row is not None
    return Allocation(**dict(row))


# ---------------------------------------------------------------------------
# Payments that may be stuck (StuckPaymentSweeper)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Unfinished:
    payment_id: str
    updated_at: datetime
    nudged_at: datetime | None
    nudges: int


async def find_unfinished(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    quiet_since: datetime,
    code_expired_before: datetime,
    limit: int,
) -> list[str]:
    """Ids of payments in requested or authorized that have not moved (nor been
    nudged) since ``quiet_since``, and in requires_verification whose code expired
    before ``code_expired_before``; not locked."""
    rows = await conn.fetch(
        "SELECT id FROM payments WHERE (status IN ('requested', 'authorized')"
        " AND updated_at < $1 AND (nudged_at IS NULL OR nudged_at < $1))"
        " OR (status = 'requires_verification' AND verification_expires_at < $2)"
        " ORDER BY updated_at LIMIT $3",
        quiet_since,
        code_expired_before,
        limit,
    )
    return [r["id"] for r in rows]


async def lock_unfinished(conn: asyncpg.Connection, payment_id: str) -> Unfinished | None:
    """Lock the payment for this transaction unless another sweeper holds it."""
    row = await conn.fetchrow(
        "SELECT id, updated_at, nudged_at, nudges FROM payments WHERE id = $1"
        " FOR UPDATE SKIP LOCKED",
        payment_id,
    )
    if row is None:
        return None
    return Unfinished(row["id"], row["updated_at"], row["nudged_at"], row["nudges"])


async def mark_nudged(conn: asyncpg.Connection, payment_id: str, at: datetime) -> int:
    """Record that the payment's last event was published again; how many times now."""
    nudges = await conn.fetchval(
        "UPDATE payments SET nudged_at = $2, nudges = nudges + 1 WHERE id = $1 RETURNING nudges",
        payment_id,
        at,
    )
    return int(nudges)


# ---------------------------------------------------------------------------
# Payer codes (SMS codes confirming a step on a payer) and family bindings
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredPayerCode:
    code: PayerCode
    caller: str
    phone_masked: str
    phone_sealed: str  # where the code went, sealed with phone_aad(code_id)


def _payer_code_from_row(row: asyncpg.Record) -> StoredPayerCode:
    code = PayerCode(
        code_id=row["code_id"],
        payer_id=row["payer_id"],
        purpose=row["purpose"],
        subject=row["subject"],
        code_hash=row["code_hash"],
        expires_at=row["expires_at"],
        attempts=row["attempts"],
        state=row["state"],
        dead_reason=row["dead_reason"],
        sent_at=row["sent_at"],
    )
    return StoredPayerCode(code, row["caller"], row["phone_masked"], row["phone_sealed"])


async def lock_phone_codes(
    conn: asyncpg.Connection, phone_hash: str, since: datetime
) -> list[datetime]:
    """When ``phone_hash`` got payer codes since ``since``, with the phone locked for the
    rest of the transaction (a transaction-scoped advisory lock on its hash), so two
    requests cannot both take the last place of the hour."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 1))", phone_hash)
    rows = await conn.fetch(
        "SELECT sent_at FROM payer_codes WHERE phone_hash = $1 AND sent_at > $2",
        phone_hash,
        since,
    )
    return [r["sent_at"] for r in rows]


async def last_code_sent(
    conn: asyncpg.Connection, payer_id: str, purpose: str, subject: str | None
) -> datetime | None:
    """When the latest code for this step (payer, purpose, and subject unless None)
    was sent."""
    value = await conn.fetchval(
        "SELECT max(sent_at) FROM payer_codes WHERE payer_id = $1 AND purpose = $2"
        " AND ($3::text IS NULL OR subject = $3)",
        payer_id,
        purpose,
        subject,
    )
    return value  # type: ignore[no-any-return]


async def insert_payer_code(
    conn: asyncpg.Connection,
    code: PayerCode,
    *,
    caller: str,
    phone_hash: str,
    phone_masked: str,
    phone_sealed: str,
    step_subject: str | None,
) -> None:
    """Store a new pending code; older pending codes of the same step (payer, purpose,
    and ``step_subject`` unless None) die (superseded): only the latest is accepted."""
    await conn.execute(
        "UPDATE payer_codes SET state = 'dead', dead_reason = 'superseded'"
        " WHERE payer_id = $1 AND purpose = $2 AND ($3::text IS NULL OR subject = $3)"
        " AND state = 'pending'",
        code.payer_id,
        code.purpose,
        step_subject,
    )
    await conn.execute(
        "INSERT INTO payer_codes (code_id, payer_id, caller, purpose, subject, code_hash,"
        " phone_hash, phone_masked, phone_sealed, expires_at, attempts, state, sent_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        code.code_id,
        code.payer_id,
        caller,
        code.purpose,
        code.subject,
        code.code_hash,
        phone_hash,
        phone_masked,
        phone_sealed,
        code.expires_at,
        code.attempts,
        code.state,
        code.sent_at,
    )


async def get_payer_code(
    conn: asyncpg.Connection, code_id: str, *, payer_id: str, purpose: str, caller: str
) -> StoredPayerCode | None:
    """The code ``code_id`` of this payer, purpose and caller, locked; None otherwise."""
    row = await conn.fetchrow(
        "SELECT * FROM payer_codes WHERE code_id = $1 AND payer_id = $2 AND purpose = $3"
        " AND caller = $4 FOR UPDATE",
        code_id,
        payer_id,
        purpose,
        caller,
    )
    return _payer_code_from_row(row) if row is not None else None


async def save_payer_code(conn: asyncpg.Connection, code: PayerCode) -> None:
    await conn.execute(
        "UPDATE payer_codes SET attempts = $2, state = $3, dead_reason = $4,"
        " used_at = CASE WHEN $3 = 'used' THEN now() ELSE used_at END WHERE code_id = $1",
        code.code_id,
        code.attempts,
        code.state,
        code.dead_reason,
    )


async def change_payer_phone(
    conn: asyncpg.Connection,
    payer_id: str,
    *,
    phone_masked: str,
    phone_sealed: str,
    phone_sealed_for: str,
) -> Payer:
    row = await conn.fetchrow(
        "UPDATE payers SET phone_masked = $2, phone_sealed = $3, phone_sealed_for = $4,"  # noqa: S608
        f" updated_at = now() WHERE payer_id = $1 RETURNING {_PAYER_COLUMNS}",
        payer_id,
        phone_masked,
        phone_sealed,
        phone_sealed_for,
    )
    if row is None:
        raise LookupError(f"payer {payer_id} vanished while being updated")
    return _payer_from_row(row)


RelativeStatus = Literal["pending", "bound", "unbound"]


@dataclass(frozen=True)
class Binding:
    """A family binding: ``relative_payer_id`` is ``relation`` of ``payer_id``."""

    payer_id: str
    relative_payer_id: str
    relation: str
    relative_id_hash: str
    status: RelativeStatus
    code_id: str
    requested_at: datetime
    bound_at: datetime | None
    unbound_at: datetime | None


_BINDING_COLUMNS = (
    "payer_id, relative_payer_id, relation, relative_id_hash, status, code_id, requested_at,"
    " bound_at, unbound_at"
)


async def request_binding(conn: asyncpg.Connection, binding: Binding) -> None:
    """Store the binding as pending with its new code (again, after an unbinding or
    while still pending)."""
    await conn.execute(
        f"INSERT INTO payer_relatives ({_BINDING_COLUMNS})"  # noqa: S608
        " VALUES ($1, $2, $3, $4, 'pending', $5, $6, NULL, NULL)"
        " ON CONFLICT (payer_id, relative_payer_id) DO UPDATE SET relation = $3,"
        " relative_id_hash = $4, status = 'pending', code_id = $5, requested_at = $6,"
        " bound_at = NULL, unbound_at = NULL, updated_at = now()",
        binding.payer_id,
        binding.relative_payer_id,
        binding.relation,
        binding.relative_id_hash,
        binding.code_id,
        binding.requested_at,
    )


async def get_binding(
    conn: asyncpg.Connection | asyncpg.Pool,
    payer_id: str,
    relative_payer_id: str,
    *,
    for_update: bool = False,
) -> Binding | None:
    row = await conn.fetchrow(
        f"SELECT {_BINDING_COLUMNS} FROM payer_relatives"  # noqa: S608
        " WHERE payer_id = $1 AND relative_payer_id = $2" + (" FOR UPDATE" if for_update else ""),
        payer_id,
        relative_payer_id,
    )
    return Binding(**dict(row)) if row is not None else None


async def set_binding_status(
    conn: asyncpg.Connection, payer_id: str, relative_payer_id: str, status: RelativeStatus
) -> Binding:
    row = await conn.fetchrow(
        "UPDATE payer_relatives SET status = $3,"  # noqa: S608
        " bound_at = CASE WHEN $3 = 'bound' THEN now() ELSE bound_at END,"
        " unbound_at = CASE WHEN $3 = 'unbound' THEN now() ELSE unbound_at END,"
        " updated_at = now() WHERE payer_id = $1 AND relative_payer_id = $2"
        f" RETURNING {_BINDING_COLUMNS}",
        payer_id,
        relative_payer_id,
        status,
    )
    if row is None:
        raise LookupError(f"binding {payer_id} -> {relative_payer_id} vanished")
    return Binding(**dict(row))


async def list_bindings(
    conn: asyncpg.Connection | asyncpg.Pool, payer_id: str
) -> list[tuple[Binding, Payer]]:
    """The payer's bindings with their relatives, oldest request first."""
    rows = await conn.fetch(
        "SELECT r.payer_id, r.relative_payer_id, r.relation, r.relative_id_hash, r.status,"
        " r.code_id, r.requested_at, r.bound_at, r.unbound_at,"
        " p.payer_id AS p_payer_id, p.caller AS p_caller, p.phone_masked AS p_phone_masked,"
        " p.phone_sealed AS p_phone_sealed, p.phone_sealed_for AS p_phone_sealed_for,"
        " p.id_number_hash AS p_id_number_hash, p.id_number_masked AS p_id_number_masked,"
        " p.name AS p_name, p.created_at AS p_created_at"
        " FROM payer_relatives r JOIN payers p ON p.payer_id = r.relative_payer_id"
        " WHERE r.payer_id = $1 ORDER BY r.requested_at, r.relative_payer_id",
        payer_id,
    )
    out = []
    for r in rows:
        d = dict(r)
        relative = Payer(**{k[2:]: d.pop(k) for k in list(d) if k.startswith("p_")})
        out.append((Binding(**d), relative))
    return out


async def bound_relative_for_share(
    conn: asyncpg.Connection, payer_id: str, relative_id_hash: str
) -> Binding | None:
    """The payer's bound relative who is the person ``relative_id_hash``, locked FOR
    SHARE until the transaction ends (an unbinding waits for a payment taking it)."""
    row = await conn.fetchrow(
        f"SELECT {_BINDING_COLUMNS} FROM payer_relatives"  # noqa: S608
        " WHERE payer_id = $1 AND relative_id_hash = $2 AND status = 'bound'"
        " ORDER BY bound_at LIMIT 1 FOR SHARE",
        payer_id,
        relative_id_hash,
    )
    return Binding(**dict(row)) if row is not None else None
