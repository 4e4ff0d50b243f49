"""What the receipt routes do: find a receipt and show it (JSON, HTML, PDF) with the
face this reader may see; the signing keys (``verification`` does 查验).

Who sees what (DESIGN.md "Contract additions: trust"): the owning caller (its key;
``ReceiptIssued.caller_id``) and operators get the full, signed face; anyone else
needs the check code and gets the masked face (``domain.receipts.public_face``), and
that read counts as a verification (查验). Receipts issued before issue 11 name no
owner: only operators read their full face. A wrong or missing check code answers
exactly like an unknown receipt (the same 404; JSON and pages alike), so it tells a
guesser nothing. Reversals (红冲) are shown beside the face, never on it: an original
is never edited.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.ledger import store
from services.ledger.domain.projector import ReceiptRow
from services.ledger.domain.receipts import (
    personal_key_id,
    public_face,
    relates_to,
    revealed_face,
)
from services.ledger.receipts import store as receipt_store
from services.ledger.receipts.html import CSP, receipt_page
from services.ledger.receipts.pdf import receipt_pdf
from services.ledger.receipts.view import Format, ReceiptView, Reversal, receipt_view
from services.ledger.schemas import (
    CODE_RE,
    NUMBER_RE,
    FaceShown,
    ReceiptKeyPublic,
    ReceiptPublic,
    ReversalPublic,
    SigningKeyPublic,
)
from services.ledger.signing import ALGORITHM, UNDIVIDED, LedgerSigners, ReceiptSigner
from shared.crypto import Sealer
from shared.errors import NotFound
from shared.http import Caller
from shared.person_keys import PersonKeyCopies


@dataclass(frozen=True)
class FoundReceipt:
    """A stored receipt with what is known beside it: the red receipts reversing it, and
    the person key its sealed names are under, while not erased (issue 11)."""

    row: ReceiptRow
    reversals: tuple[ReceiptRow, ...]
    keys: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def face(self) -> dict[str, Any]:
        """The face for reading (names opened, or 已删除); ``row.face`` is the signed one."""
        return revealed_face(self.row.face, self.keys)

    @property
    def personal(self) -> dict[str, str] | None:
        """The sealed fields as opened, for a face that has them (a full read)."""
        if personal_key_id(self.row.face) is None:
            return None
        insured = self.face["insured"]
        return {"name": insured["name"], "id_number_masked": insured["id_number_masked"]}

    @property
    def original(self) -> tuple[str, str] | None:
        return relates_to(self.row.face)

    @property
    def reversed_amount(self) -> int:
        return sum(-int(r.face["total"]) for r in self.reversals)


def html(content: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    """A page: strict CSP, and no referrer (a receipt URL may carry its check code)."""
    return HTMLResponse(
        content,
        status_code=status,
        headers={
            "Content-Security-Policy": CSP,
            "Referrer-Policy": "no-referrer",
            **(headers or {}),
        },
    )


# Every read of a receipt varies by who asks and may count a verification: no caching.
READ_HEADERS = {"Vary": "Accept, Authorization", "Cache-Control": "no-store"}


def _not_found(code: str, number: str) -> NotFound:
    """The one answer for an unknown receipt and a wrong or missing check code."""
    return NotFound(
        f"no receipt {code}/{number} with this check code; check the 票据代码 (8 digits), "
        "票据号码 (10 digits) and 校验码 (6 characters, ?check_code=) printed on the receipt",
        param="number",
    )


def same_check_code(given: str | None, check: str) -> bool:
    """``given`` is the receipt's check code (any case), compared in constant time."""
    presented = (given or "").strip().upper().encode()
    return hmac.compare_digest(presented, check.encode()) and given is not None


async def person_keys(
    pool: asyncpg.Pool, face: Mapping[str, Any], sealer: Sealer | None
) -> dict[str, bytes]:
    """The person key of ``face``'s sealed names, from the ledger's copy; none when the
    face is in the clear, the key erased, or no sealer given."""
    kid = personal_key_id(face)
    if kid is None or sealer is None:
        return {}
    kept = await PersonKeyCopies(sealer, remember_erased=False).keys(pool, [kid])
    return {k: key for k, key in kept.items() if key is not None}


async def load(
    pool: asyncpg.Pool, code: str, number: str, *, sealer: Sealer | None = None
) -> FoundReceipt | None:
    """The stored receipt and its reversals; None when unknown or malformed. With
    ``sealer``, also the person key to open its sealed names."""
    if not (re.fullmatch(CODE_RE, code) and re.fullmatch(NUMBER_RE, number)):
        return None
    row = await store.find_receipt(pool, code, number)
    if row is None:
        return None
    reversals = (
        () if relates_to(row.face) else tuple(await store.red_receipts_of(pool, code, number))
    )
    return FoundReceipt(row, reversals, await person_keys(pool, row.face, sealer))


@dataclass(frozen=True)
class Shown:
    """A receipt as this reader may see it: which face, and its 查验次数."""

    found: FoundReceipt
    face: FaceShown
    checked_count: int


async def _reads_full_face(pool: asyncpg.Pool, row: ReceiptRow, reader: Caller | None) -> bool:
    if reader is None or reader.role == "bureau":
        return False
    if reader.role == "operator":
        return True
    owner = await receipt_store.receipt_owner(pool, row.journal_seq)
    return owner is not None and owner == reader.id


async def find(
    pool: asyncpg.Pool,
    code: str,
    number: str,
    *,
    reader: Caller | None,
    check_code: str | None,
    sealer: Sealer | None = None,
) -> Shown:
    """The receipt as ``reader`` may see it: the full face for its owner (or an
    operator); else, with the right check code, the masked face, counted as one
    verification; else the same 404 as an unknown receipt."""
    found = await load(pool, code, number, sealer=sealer)
    if found is None:
        raise _not_found(code, number)
    if await _reads_full_face(pool, found.row, reader):
        count = await receipt_store.verification_count(pool, code, number)
        return Shown(found, "full", count)
    if not same_check_code(check_code, found.row.check_code):
        raise _not_found(code, number)
    return Shown(found, "masked", await store.count_verification(pool, code, number))


def receipt_public(shown: Shown) -> ReceiptPublic:
    found = shown.found
    masked = shown.face == "masked"
    row, original = found.row, found.original
    extra: dict[str, object] = {}
    if original is not None:
        extra["kind"] = "red"
        extra["relates_to"] = ReceiptKeyPublic(code=original[0], number=original[1])
    else:
        extra["reversed_amount"] = found.reversed_amount
        extra["reversals"] = [
            ReversalPublic(
                code=r.code,
                number=r.number,
                amount=-int(r.face["total"]),
                journal_seq=r.journal_seq,
                refund_id=None if masked else r.face.get("refund_id"),
            )
            for r in found.reversals
        ]
    return ReceiptPublic(
        code=row.code,
        number=row.number,
        check_code=row.check_code,  # a masked read: the very code the reader gave
        journal_seq=row.journal_seq,
        receipt=public_face(found.face) if masked else dict(row.face),
        personal=None if masked else found.personal,
        signature=row.signature,
        key_id=row.key_id,
        algorithm=ALGORITHM,
        face=shown.face,
        checked_count=shown.checked_count,
        **extra,
    )


def view_of(shown: Shown) -> ReceiptView:
    found = shown.found
    row = found.row
    reversals = tuple(
        Reversal(code=r.code, number=r.number, amount=-int(r.face["total"]))
        for r in found.reversals
    )
    masked = shown.face == "masked"
    return receipt_view(
        public_face(found.face) if masked else found.face,
        signature=row.signature,
        key_id=row.key_id,
        journal_seq=row.journal_seq,
        reversals=reversals,
        masked=masked,
        checked_count=shown.checked_count,
    )


@dataclass(frozen=True)
class ReceiptRead:
    """One read of ``GET /v1/receipts/{code}/{number}[.html|.pdf]``: who asks (None:
    no key) and the check code it gives, if any."""

    code: str
    number: str
    fmt: Format
    reader: Caller | None = None
    check_code: str | None = None


async def show_receipt(
    pool: asyncpg.Pool, read: ReceiptRead, *, font_path: str | None, sealer: Sealer | None = None
) -> Response:
    """The receipt in ``read.fmt``: the contract's JSON, the HTML page or the PDF, with
    the face this reader may see."""
    shown = await find(
        pool, read.code, read.number, reader=read.reader, check_code=read.check_code, sealer=sealer
    )
    if read.fmt == "json":
        body = receipt_public(shown).model_dump(mode="json", exclude_none=True)
        return JSONResponse(body, headers=READ_HEADERS)
    if read.fmt == "html":
        return html(receipt_page(view_of(shown)), headers=READ_HEADERS)
    pdf = await run_in_threadpool(receipt_pdf, view_of(shown), font_path=font_path)
    name = f"receipt-{read.code}-{read.number}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"', **READ_HEADERS},
    )


def signing_key(signer: ReceiptSigner, purpose: str) -> receipt_store.SigningKey:
    return receipt_store.SigningKey(signer.key_id, ALGORITHM, signer.public_key_b64, purpose)


async def register_signers(
    pool: asyncpg.Pool, signers: LedgerSigners, *, undivided: ReceiptSigner | None = None
) -> None:
    """Remember the keys this instance signs with, each with its purpose, for after a
    rotation; and ``undivided`` (the root key that signed everything before issue 11)
    when a receipt or journal entry names it."""
    if undivided is not None and await receipt_store.key_signed_records(pool, undivided.key_id):
        await receipt_store.register_signing_key(pool, signing_key(undivided, UNDIVIDED))
    for purpose, signer in signers.published():
        await receipt_store.register_signing_key(pool, signing_key(signer, purpose))


async def public_keys(pool: asyncpg.Pool, signers: LedgerSigners) -> list[SigningKeyPublic]:
    """Every key that signed something still in force, and the current ones."""
    current = {s.key_id: signing_key(s, purpose) for purpose, s in signers.published()}
    known = await receipt_store.keys_in_force(pool, list(current))
    listed = {k.key_id for k in known}
    known.extend(k for key_id, k in current.items() if key_id not in listed)
    return [
        SigningKeyPublic(
            key_id=k.key_id,
            algorithm=k.algorithm,
            public_key=k.public_key,
            purpose=k.purpose,
            current=k.key_id in current,
        )
        for k in known
    ]
