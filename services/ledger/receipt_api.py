"""Public receipt routes: the receipt (JSON, HTML, PDF), the public key, and 查验.

No caller key: residents use these. Every receipt read and every check is counted
against a per-client token bucket. A failed check answers exactly like an unknown
receipt (JSON and page alike), so it tells a guesser nothing about the right code.
"""

from __future__ import annotations

import hmac
import re
from typing import Annotated, Any
from urllib.parse import parse_qs

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from services.ledger import store
from services.ledger.ratelimit import RateLimiter
from services.ledger.receipt_html import (
    CSP,
    VERIFY_PATH,
    VerifiedFacts,
    VerifyForm,
    receipt_page,
    verify_page,
)
from services.ledger.receipt_pdf import receipt_pdf
from services.ledger.receipt_view import Format, ReceiptView, negotiate, receipt_view
from services.ledger.receipts import mask_name
from services.ledger.signing import ALGORITHM, ReceiptSigner
from shared.errors import NotFound, RateLimited
from shared.money import chinese_capitals, format_cny

CODE_RE = r"^\d{8}$"
NUMBER_RE = r"^\d{10}$"
CHECK_RE = r"^[A-Za-z2-7]{6}$"
MAX_FORM_BYTES = 4096


class ReceiptVerify(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=CODE_RE, description="票据代码, 8 digits")
    number: str = Field(pattern=NUMBER_RE, description="票据号码, 10 digits")
    check_code: str = Field(pattern=CHECK_RE, description="校验码, 6 characters")


class VerifiedReceipt(BaseModel):
    code: str
    number: str
    issue_date: str
    payer_name: str  # masked
    total: int
    currency: str
    payee: str


class VerificationPublic(BaseModel):
    valid: bool
    checked_count: int
    receipt: VerifiedReceipt | None


class PublicKeyPublic(BaseModel):
    key_id: str
    algorithm: str
    public_key: str


NOT_VALID = VerificationPublic(valid=False, checked_count=0, receipt=None)


def receipt_json(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "code": row["code"],
        "number": row["number"],
        "check_code": row["check_code"],
        "journal_seq": row["journal_seq"],
        "receipt": row["face"],
        "signature": row["signature"],
        "key_id": row["key_id"],
        "algorithm": ALGORITHM,
    }


def view_of(row: asyncpg.Record) -> ReceiptView:
    return receipt_view(
        row["face"], signature=row["signature"], key_id=row["key_id"],
        journal_seq=row["journal_seq"],
    )


async def check_receipt(
    pool: asyncpg.Pool, code: str, number: str, check: str
) -> VerificationPublic:
    """Verify code + number + check code; count the check when it is right."""
    row = await store.receipt(pool, code, number)
    expected = row["check_code"] if row is not None else "\x00" * 6
    matches = hmac.compare_digest(check.upper().encode(), expected.encode())
    if row is None or not matches:
        return NOT_VALID
    face = row["face"]
    count = await store.count_check(pool, code, number)
    return VerificationPublic(
        valid=True,
        checked_count=count,
        receipt=VerifiedReceipt(
            code=row["code"], number=row["number"], issue_date=face["issue_date"],
            payer_name=mask_name(face["payer_name"]), total=face["total"],
            currency=face.get("currency", "CNY"), payee=face["payee"],
        ),
    )


def _html(content: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(content, status_code=status,
                        headers={"Content-Security-Policy": CSP, **(headers or {})})


def _form_errors(form: VerifyForm) -> tuple[tuple[str, str], ...]:
    errors = []
    if not re.match(CODE_RE, form.code):
        errors.append(("code", "票据代码应为 8 位数字"))
    if not re.match(NUMBER_RE, form.number):
        errors.append(("number", "票据号码应为 10 位数字"))
    if not re.match(CHECK_RE, form.check_code):
        errors.append(("check_code", "校验码应为 6 位字母或数字（A-Z、2-7）"))
    return tuple(errors)


def install_receipt_routes(
    app: FastAPI, *, pool: asyncpg.Pool, signer: ReceiptSigner, limiter: RateLimiter,
    font_path: str | None = None,
) -> None:
    router = APIRouter(prefix="/v1")

    def client(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def limit(request: Request) -> None:
        """A dependency: counted before the body is read, so bad input counts too."""
        limiter.take(client(request))

    public = [Depends(limit)]

    def not_found(code: str, number: str) -> NotFound:
        return NotFound(
            f"no receipt {code}/{number}; check the 票据代码 (8 digits) and "
            "票据号码 (10 digits) printed on the receipt",
            param="number",
        )

    async def find(code: str, number: str) -> asyncpg.Record:
        row = None
        if re.match(CODE_RE, code) and re.match(NUMBER_RE, number):
            row = await store.receipt(pool, code, number)
        if row is None:
            raise not_found(code, number)
        return row

    async def render(row: asyncpg.Record, fmt: Format) -> Response:
        if fmt == "html":
            return _html(receipt_page(view_of(row)), headers={"Vary": "Accept"})
        pdf = await run_in_threadpool(receipt_pdf, view_of(row), font_path=font_path)
        name = f"receipt-{row['code']}-{row['number']}.pdf"
        return Response(pdf, media_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="{name}"', "Vary": "Accept"})

    @router.get("/receipts/public-key")
    async def public_key() -> PublicKeyPublic:
        return PublicKeyPublic(
            key_id=signer.key_id, algorithm=ALGORITHM, public_key=signer.public_key_b64
        )

    @router.get("/receipts/{code}/{number}.pdf", dependencies=public,
                response_class=Response, responses={200: {"content": {"application/pdf": {}}}})
    async def get_receipt_pdf(code: str, number: str) -> Response:
        return await render(await find(code, number), "pdf")

    @router.get("/receipts/{code}/{number}.html", dependencies=public, response_class=HTMLResponse)
    async def get_receipt_html(code: str, number: str) -> Response:
        return await render(await find(code, number), "html")

    @router.get("/receipts/{code}/{number}", dependencies=public, responses={
        200: {"content": {"text/html": {}, "application/pdf": {}}}})
    async def get_receipt(
        code: str, number: str, accept: Annotated[str | None, Header()] = None
    ) -> Any:
        """JSON by default (the contract); ``Accept: text/html`` or ``application/pdf``."""
        fmt = negotiate(accept)
        row = await find(code, number)
        if fmt == "json":
            return receipt_json(row)
        return await render(row, fmt)

    @router.post("/receipts/verify", dependencies=public)
    async def verify(body: ReceiptVerify) -> VerificationPublic:
        return await check_receipt(pool, body.code, body.number, body.check_code)

    app.include_router(router)

    @app.get(VERIFY_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def verify_form() -> HTMLResponse:
        return _html(verify_page())

    @app.post(VERIFY_PATH, response_class=HTMLResponse, include_in_schema=False)
    async def verify_submit(request: Request) -> HTMLResponse:
        raw = await request.body()
        fields = parse_qs(raw[:MAX_FORM_BYTES].decode("utf-8", "replace"))

        def field(name: str) -> str:
            return (fields.get(name) or [""])[0].strip()[:32]

        form = VerifyForm(code=field("code"), number=field("number"),
                          check_code=field("check_code").upper())
        try:
            limiter.take(client(request))
        except RateLimited as exc:
            wait = exc.details.get("retry_after", 60)
            notice = f"查验过于频繁，请 {wait} 秒后再试。"
            return _html(verify_page(form, notice=notice), 429, {"Retry-After": str(wait)})
        errors = _form_errors(form)
        if errors:
            return _html(verify_page(VerifyForm(form.code, form.number, form.check_code,
                                                errors)), 400)
        result = await check_receipt(pool, form.code, form.number, form.check_code)
        if not result.valid or result.receipt is None:
            return _html(verify_page(form, checked=True))
        r = result.receipt
        facts = VerifiedFacts(
            code=r.code, number=r.number, issue_date=r.issue_date, payer=r.payer_name,
            total_figures=f"¥{format_cny(r.total)}", total_words=chinese_capitals(r.total),
            payee=r.payee, checked_count=result.checked_count,
        )
        return _html(verify_page(form, facts=facts))
