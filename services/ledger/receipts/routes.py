"""Public receipt routes: the receipt (JSON, HTML, PDF), the public key, and 查验.

No key needed: residents use these. A reader with the check code
(``?check_code=``) gets the masked face; the owning caller, with its key, the full
face (``services.ledger.receipts.service``). Every receipt read and every
verification takes a token from the client's bucket in PostgreSQL, before anything
else (``PUBLIC``). Each route is one call into ``service`` or ``verification``.

The dependencies below are the receipts' own until ``services.ledger.deps`` and
``api.create_app`` take them: ``create_app`` still builds the in-memory limiter; the
shared one is made on first use from the settings and ``LEDGER_TRUSTED_PROXIES``.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.ledger.deps import PoolDep, SettingsDep, SignerDep
from services.ledger.receipts import service, verification
from services.ledger.receipts.html import VERIFY_PATH, VerifyForm, verify_page
from services.ledger.receipts.ratelimit import ProxySettings, SharedRateLimiter
from services.ledger.receipts.schemas import ReceiptFacePublic, SigningKeyPublic
from services.ledger.receipts.service import ReceiptRead
from services.ledger.receipts.view import Format, negotiate
from services.ledger.schemas import PublicKeyPublic, VerificationCreate, VerificationPublic
from services.ledger.signing import ALGORITHM
from shared.errors import RateLimited
from shared.http import Caller, CallerKeys

MAX_FORM_BYTES = 4096


def _limiter(request: Request) -> SharedRateLimiter:
    state = request.app.state
    limiter: SharedRateLimiter | None = getattr(state, "public_limiter", None)
    if limiter is None:
        limiter = state.public_limiter = SharedRateLimiter(
            state.settings.verify_rate_per_minute, trusted_proxies=ProxySettings().networks()
        )
    return limiter


async def take_public_token(request: Request, pool: PoolDep) -> None:
    """One token from the client's bucket, taken before the body is read or the key
    checked, so bad input counts too."""
    limiter = _limiter(request)
    peer = request.client.host if request.client else None
    client = limiter.client_of(peer, request.headers.getlist("x-forwarded-for"))
    await limiter.take(pool, client)


async def register_signer_once(request: Request, pool: PoolDep, signer: SignerDep) -> None:
    """Record this instance's signing key on its first public request (so that
    ``/v1/receipts/public-keys`` still serves it after a rotation)."""
    state = request.app.state
    if getattr(state, "signer_registered", None) != signer.key_id:
        await service.register_signer(pool, signer)
        state.signer_registered = signer.key_id


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
PUBLIC = [Depends(take_public_token), Depends(register_signer_once)]
ReaderDep = Annotated[Caller | None, Depends(_reader)]
CheckCodeQuery = Annotated[
    str | None, Query(max_length=32, description="校验码: needed unless you own the receipt")
]

router = APIRouter(prefix="/v1")  # the JSON API (and the HTML/PDF forms of a receipt)
pages = APIRouter(include_in_schema=False)  # the 查验 page


@router.get("/receipts/public-key")
async def get_public_key(signer: SignerDep) -> PublicKeyPublic:
    """The key that signs new receipts."""
    return PublicKeyPublic(
        key_id=signer.key_id, algorithm=ALGORITHM, public_key=signer.public_key_b64
    )


@router.get("/receipts/public-keys", dependencies=[Depends(register_signer_once)])
async def get_public_keys(pool: PoolDep, signer: SignerDep) -> list[SigningKeyPublic]:
    """Every key that signed a receipt still in force (after rotations), and the
    current one (``current: true``); match a receipt's ``key_id``."""
    return await service.public_keys(pool, signer)


async def _show(
    code: str,
    number: str,
    fmt: Format,
    pool: PoolDep,
    settings: SettingsDep,
    reader: Caller | None,
    check_code: str | None,
) -> Response:
    read = ReceiptRead(code, number, fmt, reader=reader, check_code=check_code)
    return await service.show_receipt(pool, read, font_path=settings.receipt_font)


@router.get(
    "/receipts/{code}/{number}.pdf",
    dependencies=PUBLIC,
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def get_receipt_pdf(
    code: str,
    number: str,
    pool: PoolDep,
    settings: SettingsDep,
    reader: ReaderDep,
    check_code: CheckCodeQuery = None,
) -> Response:
    return await _show(code, number, "pdf", pool, settings, reader, check_code)


@router.get("/receipts/{code}/{number}.html", dependencies=PUBLIC, response_class=HTMLResponse)
async def get_receipt_html(
    code: str,
    number: str,
    pool: PoolDep,
    settings: SettingsDep,
    reader: ReaderDep,
    check_code: CheckCodeQuery = None,
) -> Response:
    return await _show(code, number, "html", pool, settings, reader, check_code)


@router.get(
    "/receipts/{code}/{number}",
    dependencies=PUBLIC,
    response_model=None,
    responses={
        200: {"model": ReceiptFacePublic, "content": {"text/html": {}, "application/pdf": {}}}
    },
)
async def get_receipt(
    code: str,
    number: str,
    pool: PoolDep,
    settings: SettingsDep,
    reader: ReaderDep,
    check_code: CheckCodeQuery = None,
    accept: Annotated[str | None, Header()] = None,
) -> Response:
    """JSON by default (the contract); ``Accept: text/html`` or ``application/pdf``.
    The owner's key, or ``?check_code=`` (masked face); else 404."""
    return await _show(code, number, negotiate(accept), pool, settings, reader, check_code)


@router.post("/receipts/verify", dependencies=PUBLIC, response_model_exclude_unset=True)
async def verify(body: VerificationCreate, pool: PoolDep) -> VerificationPublic:
    return await verification.verify_receipt(pool, body.code, body.number, body.check_code)


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
async def submit_verify_page(request: Request, pool: PoolDep) -> HTMLResponse:
    form = _form(await request.body())
    try:
        await take_public_token(request, pool)
    except RateLimited as exc:
        wait = exc.details.get("retry_after", 60)
        notice = f"查验过于频繁，请 {wait} 秒后再试。"
        return service.html(verify_page(form, notice=notice), 429, {"Retry-After": str(wait)})
    return await verification.verify_form(pool, form)
