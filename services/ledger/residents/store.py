"""The records' SQL: a payer's payments, the premiums paid for an insured person, and
their refunds, read from the journal (migration 0014's indexes) and turned into
``domain.residents.PaymentRecord``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.ledger.domain.receipts import is_red, personal_key_id, revealed_face
from services.ledger.domain.residents import PaymentRecord, record_of
from services.ledger.store import Reader
from shared.crypto import Sealer
from shared.events import JournalEntryPosted, ReceiptIssued
from shared.person_keys import PersonKeyCopies

# A payer has a handful of payments a year; this bounds a pathological one.
MAX_RECORDS = 5000
_PAYMENTS = (
    "SELECT entry, receipt_event FROM journal WHERE refund_id IS NULL"
    " AND entry ->> 'kind' IN ('premium', 'wallet_topup') AND posted_at >= $2"
)


def _receipt(raw: Any) -> ReceiptIssued | None:
    return ReceiptIssued.model_validate(raw) if raw is not None else None


async def _faces(
    conn: Reader, receipts: Sequence[ReceiptIssued | None], sealer: Sealer | None
) -> list[dict[str, Any] | None]:
    """Each receipt's face for reading: names sealed per person (issue 11) opened with
    the ledger's copy of the person keys, ``已删除`` once erased; without ``sealer`` the
    faces as signed."""
    if sealer is None:
        return [dict(r.receipt) if r is not None else None for r in receipts]
    wanted = [kid for r in receipts if r is not None and (kid := personal_key_id(r.receipt))]
    opened = await PersonKeyCopies(sealer, remember_erased=False).keys(conn, wanted)
    keys = {k: v for k, v in opened.items() if v is not None}
    return [revealed_face(r.receipt, keys) if r is not None else None for r in receipts]


async def _records(
    conn: Reader, rows: Sequence[Any], sealer: Sealer | None = None
) -> list[PaymentRecord]:
    ids = [r["entry"]["payment_id"] for r in rows]
    refunds: dict[str, list[JournalEntryPosted]] = {}
    if ids:
        for r in await conn.fetch(
            "SELECT entry FROM journal WHERE payment_id = ANY($1::text[])"
            " AND refund_id IS NOT NULL ORDER BY seq",
            ids,
        ):
            entry = JournalEntryPosted.model_validate(r["entry"])
            refunds.setdefault(entry.payment_id, []).append(entry)
    receipts = [_receipt(r["receipt_event"]) for r in rows]
    faces = await _faces(conn, receipts, sealer)
    return [
        record_of(
            JournalEntryPosted.model_validate(r["entry"]),
            receipt,
            refunds.get(r["entry"]["payment_id"], ()),
            face=face,
        )
        for r, receipt, face in zip(rows, receipts, faces, strict=True)
    ]


async def payments_of(
    conn: Reader, payer_id: str, since: datetime, sealer: Sealer | None = None
) -> list[PaymentRecord]:
    """The payments ``payer_id`` made since ``since``, newest first (names opened with
    ``sealer``'s keys: ``_faces``)."""
    rows = await conn.fetch(
        _PAYMENTS + " AND entry ->> 'payer_id' = $1 ORDER BY seq DESC LIMIT $3",
        payer_id,
        since,
        MAX_RECORDS,
    )
    return await _records(conn, rows, sealer)


async def premiums_for(
    conn: Reader,
    caller_id: str,
    insured_id_hash: str,
    since: datetime,
    sealer: Sealer | None = None,
) -> list[PaymentRecord]:
    """The premiums paid for the person ``insured_id_hash`` by any payer of
    ``caller_id`` since ``since``, newest first."""
    rows = await conn.fetch(
        _PAYMENTS + " AND receipt_event ->> 'insured_id_hash' = $1"
        " AND receipt_event ->> 'caller_id' = $4 ORDER BY seq DESC LIMIT $3",
        insured_id_hash,
        since,
        MAX_RECORDS,
        caller_id,
    )
    return await _records(conn, rows, sealer)


async def payment(
    conn: Reader, payment_id: str, sealer: Sealer | None = None
) -> PaymentRecord | None:
    """One payment (premium or top-up) with its refunds; None if not in the journal."""
    rows = await conn.fetch(
        "SELECT entry, receipt_event FROM journal WHERE refund_id IS NULL"
        " AND entry ->> 'kind' IN ('premium', 'wallet_topup') AND payment_id = $1",
        payment_id,
    )
    found = await _records(conn, rows, sealer)
    return found[0] if found else None


async def receipts_of(conn: Reader, payment_id: str) -> list[dict[str, Any]]:
    """The receipts of a payment, original first, then its red receipts (红冲)."""
    rows = await conn.fetch(
        "SELECT code, number, check_code, journal_seq, issued_at, face FROM receipts"
        " WHERE payment_id = $1 ORDER BY journal_seq",
        payment_id,
    )
    return [
        {
            "code": r["code"],
            "number": r["number"],
            "check_code": r["check_code"],
            "journal_seq": r["journal_seq"],
            "issued_at": r["issued_at"],
            "kind": "red" if is_red(r["face"]) else "original",
            "amount": int(r["face"]["total"]),
        }
        for r in rows
    ]


# ---------------------------------------------------------------------------
# Certificates (migration 0015)
# ---------------------------------------------------------------------------

_CERTIFICATES = (
    "SELECT number, payer_id, year, check_code, face, signature, key_id, issued_at,"
    " verify_count, content_sha256 FROM certificates"
)


@dataclass(frozen=True)
class CertificateRow:
    number: str
    payer_id: str
    year: int
    check_code: str
    face: Mapping[str, Any]
    signature: str
    key_id: str
    issued_at: datetime
    verify_count: int
    content_sha256: str  # of the face without number, check code and issue time


def _certificate(row: Any) -> CertificateRow:
    return CertificateRow(**dict(row))


async def certificate_with(
    conn: Reader, payer_id: str, year: int, digest: str
) -> CertificateRow | None:
    row = await conn.fetchrow(
        _CERTIFICATES + " WHERE payer_id = $1 AND year = $2 AND content_sha256 = $3",
        payer_id,
        year,
        digest,
    )
    return _certificate(row) if row is not None else None


async def next_certificate_number(conn: Reader) -> int:
    n: int = await conn.fetchval("SELECT nextval('certificate_numbers')")
    return n


async def insert_certificate(
    conn: Reader,
    row: CertificateRow,
    *,
    caller_id: str,
) -> CertificateRow:
    """Store ``row``; when the same content was issued meanwhile, that one."""
    await conn.execute(
        "INSERT INTO certificates (number, payer_id, caller_id, year, content_sha256,"
        " check_code, face, signature, key_id, issued_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (payer_id, year, content_sha256) DO NOTHING",
        row.number,
        row.payer_id,
        caller_id,
        row.year,
        row.content_sha256,
        row.check_code,
        dict(row.face),
        row.signature,
        row.key_id,
        row.issued_at,
    )
    stored = await certificate_with(conn, row.payer_id, row.year, row.content_sha256)
    assert stored is not None
    return stored


async def find_certificate(conn: Reader, number: str) -> CertificateRow | None:
    row = await conn.fetchrow(_CERTIFICATES + " WHERE number = $1", number)
    return _certificate(row) if row is not None else None


async def count_certificate_check(conn: Reader, number: str) -> int:
    count: int = await conn.fetchval(
        "UPDATE certificates SET verify_count = verify_count + 1 WHERE number = $1"
        " RETURNING verify_count",
        number,
    )
    return count
