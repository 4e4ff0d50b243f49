"""Public receipt routes: the receipt (JSON, HTML, PDF), the public key, and 查验.

No key needed: residents use these. A reader with the check code
(``?check_code=``) gets the masked face; the owning caller, with its key, the full
face (``services.ledger.receipts.service``). Every receipt read and every
verification takes a token from the client's bucket in PostgreSQL, before anything
else (``PUBLIC``; the limiter is the one ``api.create_app`` built). Each route is one
call into ``service`` or ``verification``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.ledger.deps import PoolDep, PublicLimiterDep, SettingsDep, SignerDep, SignersDep
from services.ledger.receipts import service, verification
from services.ledger.receipts.html import VERIFY_PATH, VerifyForm, verify_page
from services.ledger.receipts.service import ReceiptRead
from services.ledger.receipts.view import Format, negotiate
from services.ledger.schemas import (
    PublicKeyPublic,
    ReceiptPublic,
    SigningKeyPublic,
    VerificationCreate,
    VerificationPublic,
)
from services.ledger.signing import ALGORITHM, SigningPurpose
from shared.errors import RateLimited
from shared.http import Caller, CallerKeys

MAX_FORM_BYTES = 4096


async def take_public_token(request: Request, pool: PoolDep, limiter: PublicLimiterDep) -> None:
    """One token from the client's bucket, taken before the body is read or the key
    checked, so bad input counts too."""
    peer = request.client.host if request.client else None
    client = limiter.client_of(peer, request.headers.getlist("x-forwarded-for"))
    await limiter.take(pool, client)


_BEARER = HTTPBearer(auto_error=False, description="optional: the owning caller's API key")


async def _reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> Caller | None:
    """Who reads: None without a key; a key that is not recognised is 401."""
    if credentials is None:
        return None
    keys: CallerKeys = request.app.state.caller_keys
    return keys.authenticate(f"Bearer {credentials.credentials}")


# ``dependencies=`` of the public routes
PUBLIC = [Depends(take_public_token)]
ReaderDep = Annotated[Caller | None, Depends(_reader)]
CheckCodeQuery = Annotated[
    str | None, Query(max_length=32, description="校验码: needed unless you own the receipt")
]


def _read_as(fmt: Format) -> Callable[..., Awaitable[ReceiptRead]]:
    """A dependency: the read of ``/receipts/{code}/{number}`` in ``fmt``."""

    async def read(
        code: str, number: str, reader: ReaderDep, check_code: CheckCodeQuery = None
    ) -> ReceiptRead:
        return ReceiptRead(code, number, fmt, reader=reader, check_code=check_code)

    return read


async def _read_negotiated(
    read: Annotated[ReceiptRead, Depends(_read_as("json"))],
    accept: Annotated[str | None, Header()] = None,
) -> ReceiptRead:
    return replace(read, fmt=negotiate(accept))


router = APIRouter(prefix="/v1")  # the JSON API (and the HTML/PDF forms of a receipt)
pages = APIRouter(include_in_schema=False)  # the 查验 page


@router.get("/receipts/public-key")
async def get_public_key(signer: SignerDep) -> PublicKeyPublic:
    """The key that signs new receipts."""
    return PublicKeyPublic(
        key_id=signer.key_id,
        algorithm=ALGORITHM,
        public_key=signer.public_key_b64,
        purpose=SigningPurpose.RECEIPTS,
    )


@router.get("/receipts/public-keys")
async def get_public_keys(pool: PoolDep, signers: SignersDep) -> list[SigningKeyPublic]:
    """Every key an auditor needs, each with its ``purpose`` (receipts, journal,
    settlement, manifests, certificates; ``all``: the undivided key of before issue 11):
    the current ones (``current: true``) and those that signed something still in force
    (each instance records its keys at start-up); match an artefact's ``key_id``."""
    return await service.public_keys(pool, signers)


@router.get(
    "/receipts/{code}/{number}.pdf",
    dependencies=PUBLIC,
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def get_receipt_pdf(
    read: Annotated[ReceiptRead, Depends(_read_as("pdf"))], pool: PoolDep, settings: SettingsDep
) -> Response:
    return await service.show_receipt(
        pool, read, font_path=settings.receipt_font, sealer=settings.sealer()
    )


@router.get("/receipts/{code}/{number}.html", dependencies=PUBLIC, response_class=HTMLResponse)
async def get_receipt_html(
    read: Annotated[ReceiptRead, Depends(_read_as("html"))], pool: PoolDep, settings: SettingsDep
) -> Response:
    return await service.show_receipt(
        pool, read, font_path=settings.receipt_font, sealer=settings.sealer()
    )


@router.get(
    "/receipts/{code}/{number}",
    dependencies=PUBLIC,
    response_model=None,
    responses={200: {"model": ReceiptPublic, "content": {"text/html": {}, "application/pdf": {}}}},
)
async def get_receipt(
    read: Annotated[ReceiptRead, Depends(_read_negotiated)], pool: PoolDep, settings: SettingsDep
) -> Response:
    """JSON by default (the contract); ``Accept: text/html`` or ``application/pdf``.
    The owner's key, or ``?check_code=`` (masked face); else 404."""
    return await service.show_receipt(
        pool, read, font_path=settings.receipt_font, sealer=settings.sealer()
    )


@router.post("/receipts/verify", dependencies=PUBLIC, response_model_exclude_unset=True)
async def verify(
    body: VerificationCreate, pool: PoolDep, settings: SettingsDep
) -> VerificationPublic:
    return await verification.verify_receipt(
        pool, body.code, body.number, body.check_code, sealer=settings.sealer()
    )


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
async def submit_verify_page(
    request: Request, pool: PoolDep, limiter: PublicLimiterDep, settings: SettingsDep
) -> HTMLResponse:
    form = _form(await request.body())
    try:
        await take_public_token(request, pool, limiter)
    except RateLimited as exc:
        wait = exc.details.get("retry_after", 60)
        notice = f"查验过于频繁，请 {wait} 秒后再试。"
        return service.html(verify_page(form, notice=notice), 429, {"Retry-After": str(wait)})
    return await verification.verify_form(pool, form, sealer=settings.sealer())
