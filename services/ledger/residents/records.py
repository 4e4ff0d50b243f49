"""A payer's records (issue 12, "Records a resident can see"): the basic list, and the
detail (消费明细) behind a records session.

The list is the owner's (``owners.owned_payer``): the payments the payer made
(``role=payer``), or the premiums paid for this person as the insured by any payer of
the same caller (``role=insured``; the person is the payer's keyed ID hash), over the
last three years, newest first. The detail needs ``X-Records-Session``: a token payment
issues after an SMS code to the enrolled phone (``shared.sessions``), bound to this
caller and payer; without one 401, with a bad or expired one 403, both
``records_session_required``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from services.ledger import owners
from services.ledger.domain.receipts import mask_name
from services.ledger.domain.residents import (
    PaymentRecord,
    RecordFilter,
    Role,
    in_window,
    newest_first,
    page,
    window_start,
)
from services.ledger.owners import PayerOwner
from services.ledger.residents import store
from services.ledger.schemas import (
    InsuredPublic,
    ReceiptKeyPublic,
    RecordDetailPublic,
    RecordLinePublic,
    RecordPublic,
    RecordReceiptPublic,
    RecordRefundPublic,
    RecordsPublic,
)
from shared.crypto import Sealer
from shared.errors import DomainError, NotFound
from shared.http import Caller
from shared.sessions import records_session_valid

SESSION_HEADER = "X-Records-Session"
EVER = datetime(1970, 1, 1, tzinfo=UTC)


class RecordsSessionRequired(DomainError):
    status = 401
    code = "records_session_required"


def _session_problem(payer_id: str, *, given: bool) -> RecordsSessionRequired:
    what = "is not valid for this payer or has expired" if given else "is missing"
    return RecordsSessionRequired(
        f"the detailed records (消费明细) need a fresh SMS code: the {SESSION_HEADER} header"
        f" {what}. Ask the payment API for a records session for payer {payer_id} (an SMS"
        " code goes to the payer's enrolled phone), confirm the code, and send the token"
        f" it returns as {SESSION_HEADER}",
        param=SESSION_HEADER,
        status=403 if given else 401,
    )


async def insured_records(
    conn: asyncpg.Pool, owner: PayerOwner, since: datetime, sealer: Sealer | None = None
) -> list[PaymentRecord]:
    """The premiums paid for the payer as the insured person, by any payer of its caller:
    by the keyed ID hash; and the payer's own premiums for itself from before receipts
    carried that hash. Newest first."""
    found: dict[str, PaymentRecord] = {}
    if owner.id_number_hash:
        by_hash = store.premiums_for(conn, owner.caller_id, owner.id_number_hash, since, sealer)
        for r in await by_hash:
            found[r.payment_id] = r
    for r in await store.payments_of(conn, owner.payer_id, since, sealer):
        if r.kind == "premium" and r.insured_id_hash is None and r.relation == "self":
            found.setdefault(r.payment_id, r)
    return newest_first(found.values())


async def records_of(
    conn: asyncpg.Pool, owner: PayerOwner, role: Role, since: datetime, sealer: Sealer | None
) -> list[PaymentRecord]:
    if role == "insured":
        return await insured_records(conn, owner, since, sealer)
    return await store.payments_of(conn, owner.payer_id, since, sealer)


def _insured(record: PaymentRecord) -> InsuredPublic | None:
    if record.insured_name is None:
        return None
    return InsuredPublic(
        name=mask_name(record.insured_name),
        id_number_masked=record.insured_id_number_masked or "",
        relation=record.relation or "",
    )


def _fields(record: PaymentRecord) -> dict[str, object]:
    return {
        "payment_id": record.payment_id,
        "date": record.day.isoformat(),
        "posted_at": record.posted_at,
        "kind": record.kind,
        "item": record.item,
        "scheme": record.scheme,
        "region": record.region,
        "period": record.period,
        "payee_id": record.payee_id,
        "payee": record.payee,
        "amount": record.amount,
        "currency": record.currency,
        "status": record.status,
        "refunded_amount": record.refunded,
        "receipt": (
            ReceiptKeyPublic(code=record.receipt[0], number=record.receipt[1])
            if record.receipt
            else None
        ),
        "payer_id": record.payer_id,
        "insured": _insured(record),
    }


async def list_records(
    pool: asyncpg.Pool,
    caller: Caller,
    payer_id: str,
    *,
    role: Role,
    wanted: RecordFilter,
    starting_after: str | None,
    limit: int,
    now: datetime,
    sealer: Sealer | None = None,
) -> RecordsPublic:
    owner = await owners.owned_payer(pool, caller, payer_id)
    wanted = wanted.check(now)
    found = await records_of(pool, owner, role, window_start(now), sealer)
    records = [r for r in found if wanted.matches(r)]
    chosen, more = page(records, starting_after=starting_after, limit=limit)
    return RecordsPublic(
        payer_id=payer_id,
        role=role,
        records=[RecordPublic.model_validate(_fields(r)) for r in chosen],
        has_more=more,
        next_starting_after=chosen[-1].payment_id if more and chosen else None,
    )


def _unknown_record(payment_id: str) -> NotFound:
    return NotFound(
        f"no record {payment_id!r} for this payer in the last three years; list the"
        " records (GET /v1/payers/{payer_id}/records) for their payment ids",
        param="payment_id",
    )


def _belongs(record: PaymentRecord, owner: PayerOwner) -> bool:
    """The payer paid it, or it was paid for this person by a payer of the same caller."""
    if record.payer_id == owner.payer_id:
        return True
    return (
        owner.id_number_hash is not None
        and record.insured_id_hash == owner.id_number_hash
        and record.caller_id == owner.caller_id
    )


async def record_detail(
    pool: asyncpg.Pool,
    caller: Caller,
    payer_id: str,
    payment_id: str,
    *,
    session: str | None,
    key: bytes,
    now: datetime,
    sealer: Sealer | None = None,
) -> RecordDetailPublic:
    owner = await owners.owned_payer(pool, caller, payer_id)
    if not session:
        raise _session_problem(payer_id, given=False)
    if not records_session_valid(key, session, caller=caller.id, payer_id=payer_id, now=now):
        raise _session_problem(payer_id, given=True)
    record = await store.payment(pool, payment_id, sealer)
    if record is None or not _belongs(record, owner) or not in_window(record, now):
        raise _unknown_record(payment_id)
    receipts = await store.receipts_of(pool, payment_id)
    return RecordDetailPublic(
        **_fields(record),
        method=record.method,
        journal_seq=record.journal_seq,
        lines=[RecordLinePublic(account_id=a, amount=n) for a, n in record.lines],
        receipts=[RecordReceiptPublic.model_validate(r) for r in receipts],
        refunds=[
            RecordRefundPublic(
                refund_id=f.refund_id,
                amount=f.amount,
                posted_at=f.posted_at,
                journal_seq=f.journal_seq,
                receipt=ReceiptKeyPublic(code=f.receipt[0], number=f.receipt[1])
                if f.receipt
                else None,
                bank_reference=f.bank_reference,
            )
            for f in record.refunds
        ],
        bank_reference=record.bank_reference,
    )
