"""查验: verify a receipt by code, number and check code (``POST /v1/receipts/verify``
and the 查验 page), counting each successful verification once.

A failed verification answers exactly like an unknown receipt (JSON and page alike),
so it tells a guesser nothing about the right check code. The answer shows no more than
the masked face: the payer's masked name, the total, the payee, the reversals.
"""

from __future__ import annotations

import re

import asyncpg
from fastapi.responses import HTMLResponse

from services.ledger import store
from services.ledger.domain.receipts import face_parties
from services.ledger.receipts import service
from services.ledger.receipts.html import VerifiedFacts, VerifyForm, verify_page
from services.ledger.schemas import (
    CHECK_CODE_RE,
    CODE_RE,
    NUMBER_RE,
    ReceiptKeyPublic,
    VerificationPublic,
    VerifiedReceiptPublic,
)
from shared.crypto import Sealer
from shared.money import chinese_capitals, format_cny

NOT_VALID = VerificationPublic(valid=False, checked_count=0, receipt=None)


async def verify_receipt(
    pool: asyncpg.Pool, code: str, number: str, check: str, *, sealer: Sealer | None = None
) -> VerificationPublic:
    """Verify code + number + check code; count the verification when it is right."""
    found = await service.load(pool, code, number, sealer=sealer)
    if found is None or not service.same_check_code(check, found.row.check_code):
        return NOT_VALID
    row, face = found.row, found.face
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
    if not re.fullmatch(CODE_RE, form.code):
        errors.append(("code", "票据代码应为 8 位数字"))
    if not re.fullmatch(NUMBER_RE, form.number):
        errors.append(("number", "票据号码应为 10 位数字"))
    if not re.fullmatch(CHECK_CODE_RE, form.check_code):
        errors.append(("check_code", "校验码应为 6 位字母或数字（A-Z、2-7）"))
    return tuple(errors)


def _reversal_text(result: VerificationPublic) -> str:
    if result.relates_to is not None:
        return f"红字票据，冲销原票据 {result.relates_to.code}/{result.relates_to.number}"
    if result.reversed_amount:
        return f"已被红冲 ¥{format_cny(result.reversed_amount)}"
    return ""


async def verify_form(
    pool: asyncpg.Pool, form: VerifyForm, *, sealer: Sealer | None = None
) -> HTMLResponse:
    """The 查验 page's answer to a submitted form."""
    errors = form_errors(form)
    if errors:
        invalid = VerifyForm(form.code, form.number, form.check_code, errors)
        return service.html(verify_page(invalid), 400)
    result = await verify_receipt(pool, form.code, form.number, form.check_code, sealer=sealer)
    if not result.valid or result.receipt is None:
        return service.html(verify_page(form, checked=True))
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
    return service.html(verify_page(form, facts=facts))
