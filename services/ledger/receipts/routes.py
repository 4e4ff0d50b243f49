"""Public receipt routes: the receipt (JSON, HTML, PDF), the public key, and 查验.

No caller key: residents use these. Every receipt read and every verification is
counted against a per-client token bucket (``deps.PUBLIC``). Each route is one call
into ``services.ledger.receipts.service``.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, Response

from services.ledger.deps import PUBLIC, LimiterDep, PoolDep, SettingsDep, SignerDep, client_address
from services.ledger.receipts import service
from services.ledger.receipts.html import VERIFY_PATH, VerifyForm, verify_page
from services.ledger.receipts.view import negotiate
from services.ledger.schemas import (
    PublicKeyPublic,
    ReceiptPublic,
    VerificationCreate,
    VerificationPublic,
)
from services.ledger.signing import ALGORITHM
from shared.errors import RateLimited

MAX_FORM_BYTES = 4096

router = APIRouter(prefix="/v1")  # the JSON API (and the HTML/PDF forms of a receipt)
pages = APIRouter(include_in_schema=False)  # the 查验 page


@router.get("/receipts/public-key")
async def get_public_key(signer: SignerDep) -> PublicKeyPublic:
    return PublicKeyPublic(
        key_id=signer.key_id, algorithm=ALGORITHM, public_key=signer.public_key_b64
    )


@router.get(
    "/receipts/{code}/{number}.pdf",
    dependencies=PUBLIC,
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def get_receipt_pdf(code: str, number: str, pool: PoolDep, settings: SettingsDep) -> Any:
    return await service.show_receipt(pool, code, number, "pdf", font_path=settings.receipt_font)


@router.get("/receipts/{code}/{number}.html", dependencies=PUBLIC, response_class=HTMLResponse)
async def get_receipt_html(code: str, number: str, pool: PoolDep, settings: SettingsDep) -> Any:
    return await service.show_receipt(pool, code, number, "html", font_path=settings.receipt_font)


@router.get(
    "/receipts/{code}/{number}",
    dependencies=PUBLIC,
    response_model=None,
    responses={200: {"model": ReceiptPublic, "content": {"text/html": {}, "application/pdf": {}}}},
)
async def get_receipt(
    code: str,
    number: str,
    pool: PoolDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
) -> Any:
    """JSON by default (the contract); ``Accept: text/html`` or ``application/pdf``."""
    shown = await service.show_receipt(
        pool, code, number, negotiate(accept), font_path=settings.receipt_font
    )
    if isinstance(shown, Response):
        return shown
    return shown.model_dump(mode="json", exclude_none=True)


@router.post("/receipts/verify", dependencies=PUBLIC, response_model_exclude_unset=True)
async def verify(body: VerificationCreate, pool: PoolDep) -> VerificationPublic:
    return await service.verify_receipt(pool, body.code, body.number, body.check_code)


@pages.get(VERIFY_PATH, response_class=HTMLResponse)
async def get_verify_page() -> HTMLResponse:
    return service.html(verify_page())


def _form(raw: bytes) -> VerifyForm:
    fields = parse_qs(raw[:MAX_FORM_BYTES].decode("utf-8", "replace"))

    def field(name: str) -> str:
        return (fields.get(name) or [""])[0].strip()[:32]

    return VerifyForm(
        code=field("code"), number=field("number"), check_code=field("check_code").upper()
    )


@pages.post(VERIFY_PATH, response_class=HTMLResponse)
async def submit_verify_page(request: Request, pool: PoolDep, limiter: LimiterDep) -> HTMLResponse:
    form = _form(await request.body())
    try:
        limiter.take(client_address(request))
    except RateLimited as exc:
        wait = exc.details.get("retry_after", 60)
        notice = f"查验过于频繁，请 {wait} 秒后再试。"
        return service.html(verify_page(form, notice=notice), 429, {"Retry-After": str(wait)})
    return await service.verify_form(pool, form)
