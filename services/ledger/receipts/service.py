"""What the public receipt routes do: find a receipt, show it (JSON, HTML, PDF), and
verify it (查验).

A failed verification answers exactly like an unknown receipt (JSON and page alike),
so it tells a guesser nothing about the right check code. Reversals (红冲) are shown
beside the signed face, never on it: an original is never edited.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

import asyncpg
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from services.ledger import store
from services.ledger.domain.projector import ReceiptRow
from services.ledger.domain.receipts import face_parties, relates_to
from services.ledger.receipts.html import CSP, VerifiedFacts, VerifyForm, receipt_page, verify_page
from services.ledger.receipts.pdf import receipt_pdf
from services.ledger.receipts.view import Format, ReceiptView, Reversal, receipt_view
from services.ledger.schemas import (
    CHECK_CODE_RE,
    CODE_RE,
    NUMBER_RE,
    ReceiptKeyPublic,
    ReceiptPublic,
    ReversalPublic,
    VerificationPublic,
    VerifiedReceiptPublic,
)
from services.ledger.signing import ALGORITHM
from shared.errors import NotFound
from shared.money import chinese_capitals, format_cny

NOT_VALID = VerificationPublic(valid=False, checked_count=0, receipt=None)


@dataclass(frozen=True)
class FoundReceipt:
    """A stored receipt with what is known beside it: the red receipts reversing it."""

    row: ReceiptRow
    reversals: tuple[ReceiptRow, ...]

    @property
    def original(self) -> tuple[str, str] | None:
        return relates_to(self.row.face)

    @property
    def reversed_amount(self) -> int:
        return sum(-int(r.face["total"]) for r in self.reversals)


def html(content: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(
        content, status_code=status, headers={"Content-Security-Policy": CSP, **(headers or {})}
    )


def _not_found(code: str, number: str) -> NotFound:
    return NotFound(
        f"no receipt {code}/{number}; check the 票据代码 (8 digits) and "
        "票据号码 (10 digits) printed on the receipt",
        param="number",
    )


async def _load(pool: asyncpg.Pool, code: str, number: str) -> FoundReceipt | None:
    if not (re.match(CODE_RE, code) and re.match(NUMBER_RE, number)):
        return None
    row = await store.find_receipt(pool, code, number)
    if row is None:
        return None
    reversals = (
        () if relates_to(row.face) else tuple(await store.red_receipts_of(pool, code, number))
    )
    return FoundReceipt(row, reversals)


async def find(pool: asyncpg.Pool, code: str, number: str) -> FoundReceipt:
    found = await _load(pool, code, number)
    if found is None:
        raise _not_found(code, number)
    return found


def receipt_public(found: FoundReceipt) -> ReceiptPublic:
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
                refund_id=r.face.get("refund_id"),
            )
            for r in found.reversals
        ]
    return ReceiptPublic(
        code=row.code,
        number=row.number,
        check_code=row.check_code,
        journal_seq=row.journal_seq,
        receipt=dict(row.face),
        signature=row.signature,
        key_id=row.key_id,
        algorithm=ALGORITHM,
        **extra,
    )


def view_of(found: FoundReceipt) -> ReceiptView:
    row = found.row
    reversals = tuple(
        Reversal(code=r.code, number=r.number, amount=-int(r.face["total"]))
        for r in found.reversals
    )
    return receipt_view(
        row.face,
        signature=row.signature,
        key_id=row.key_id,
        journal_seq=row.journal_seq,
        reversals=reversals,
    )


async def show_receipt(
    pool: asyncpg.Pool, code: str, number: str, fmt: Format, *, font_path: str | None
) -> ReceiptPublic | Response:
    """The receipt in ``fmt``: the contract's JSON, the HTML page or the PDF."""
    found = await find(pool, code, number)
    if fmt == "json":
        return receipt_public(found)
    if fmt == "html":
        return html(receipt_page(view_of(found)), headers={"Vary": "Accept"})
    pdf = await run_in_threadpool(receipt_pdf, view_of(found), font_path=font_path)
    name = f"receipt-{code}-{number}.pdf"
    return Response(
        pdf,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="{name}"', "Vary": "Accept"},
    )


async def verify_receipt(
    pool: asyncpg.Pool, code: str, number: str, check: str
) -> VerificationPublic:
    """Verify code + number + check code; count the verification when it is right."""
    found = await _load(pool, code, number)
    expected = found.row.check_code if found is not None else "\x00" * 6
    matches = hmac.compare_digest(check.upper().encode(), expected.encode())
    if found is None or not matches:
        return NOT_VALID
    row, face = found.row, found.row.face
    count = await store.count_verification(pool, code, number)
    result = VerificationPublic(
        valid=True,
        checked_count=count,
        receipt=VerifiedReceiptPublic(
            code=row.code,
            number=row.number,
            issue_date=face["issue_date"],
            payer_name=face_parties(face).payer_shown,
            total=face["total"],
            currency=face.get("currency", "CNY"),
            payee=face["payee"],
        ),
    )
    original = found.original
    if original is not None:
        result.relates_to = ReceiptKeyPublic(code=original[0], number=original[1])
    else:
        result.reversed_amount = found.reversed_amount
    return result


def form_errors(form: VerifyForm) -> tuple[tuple[str, str], ...]:
    errors = []
    if not re.match(CODE_RE, form.code):
        errors.append(("code", "票据代码应为 8 位数字"))
    if not re.match(NUMBER_RE, form.number):
        errors.append(("number", "票据号码应为 10 位数字"))
    if not re.match(CHECK_CODE_RE, form.check_code):
        errors.append(("check_code", "校验码应为 6 位字母或数字（A-Z、2-7）"))
    return tuple(errors)


def _reversal_text(result: VerificationPublic) -> str:
    if result.relates_to is not None:
        return f"红字票据，冲销原票据 {result.relates_to.code}/{result.relates_to.number}"
    if result.reversed_amount:
        return f"已被红冲 ¥{format_cny(result.reversed_amount)}"
    return ""


async def verify_form(pool: asyncpg.Pool, form: VerifyForm) -> HTMLResponse:
    """The 查验 page's answer to a submitted form."""
    errors = form_errors(form)
    if errors:
        invalid = VerifyForm(form.code, form.number, form.check_code, errors)
        return html(verify_page(invalid), 400)
    result = await verify_receipt(pool, form.code, form.number, form.check_code)
    if not result.valid or result.receipt is None:
        return html(verify_page(form, checked=True))
    r = result.receipt
    facts = VerifiedFacts(
        code=r.code,
        number=r.number,
        issue_date=r.issue_date,
        payer=r.payer_name,
        total_figures=f"¥{format_cny(r.total)}",
        total_words=chinese_capitals(r.total),
        payee=r.payee,
        checked_count=result.checked_count,
        reversal=_reversal_text(result),
    )
    return html(verify_page(form, facts=facts))
