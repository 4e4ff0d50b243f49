"""The resident's routes (issue 12): records, record detail, overview, the insurance
certificate (JSON, HTML, PDF). Each needs the payer's owning caller key (or an
operator's); another caller gets the 404 of a payer nobody enrolled. Certificate 查验
and its public key are public (``certificates``; verification rate-limited like
receipts'). Each route is one call into ``records``, ``overview`` or ``certificates``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from services.ledger.deps import CertificatesDep, PayerReaderDep, PoolDep, SettingsDep
from services.ledger.domain.residents import RecordFilter
from services.ledger.receipts.routes import PUBLIC
from services.ledger.receipts.service import READ_HEADERS, html
from services.ledger.residents import certificates as certificate_service
from services.ledger.residents import overview, records
from services.ledger.residents.certificate_pages import (
    certificate_page,
    certificate_pdf,
    certificate_view,
)
from services.ledger.residents.keys import records_session_key
from services.ledger.residents.store import CertificateRow
from services.ledger.schemas import (
    CertificatePublic,
    CertificateVerificationPublic,
    CertificateVerifyCreate,
    OverviewPublic,
    PublicKeyPublic,
    RecordDetailPublic,
    RecordsPublic,
)
from services.ledger.signing import ALGORITHM
from shared.http import Caller
from shared.money import shanghai_day, utcnow

router = APIRouter(prefix="/v1/payers/{payer_id}", tags=["resident"])
certificates = APIRouter(prefix="/v1/certificates", tags=["resident"])

PayerPath = Annotated[str, Path(max_length=128, description="the payer, as enrolled")]


@router.get("/records")
async def get_records(
    payer_id: PayerPath,
    pool: PoolDep,
    caller: PayerReaderDep,
    settings: SettingsDep,
    role: Annotated[
        Literal["payer", "insured"],
        Query(description="payer: payments it made; insured: premiums paid for this person"),
    ] = "payer",
    year: Annotated[int | None, Query(ge=1900, le=9999, description="year paid")] = None,
    payee: Annotated[
        str | None, Query(max_length=140, description="payee id, e.g. bureau:110000")
    ] = None,
    item: Annotated[
        str | None, Query(max_length=40, description="premium, wallet_topup or a scheme")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    starting_after: Annotated[
        str | None, Query(max_length=128, description="the last payment_id of the previous page")
    ] = None,
) -> RecordsPublic:
    """The payer's money records over the last three years, newest first (basic lines)."""
    return await records.list_records(
        pool,
        caller,
        payer_id,
        role=role,
        wanted=RecordFilter(year=year, payee=payee, item=item),
        starting_after=starting_after,
        limit=limit,
        now=utcnow(),
        sealer=settings.sealer(),
    )


@router.get("/records/{payment_id}")
async def get_record(
    payer_id: PayerPath,
    payment_id: Annotated[str, Path(max_length=128)],
    pool: PoolDep,
    caller: PayerReaderDep,
    settings: SettingsDep,
    session: Annotated[
        str | None,
        Header(alias=records.SESSION_HEADER, max_length=512, description="records session"),
    ] = None,
) -> RecordDetailPublic:
    """One record in detail (消费明细): lines, receipts (red ones too), refunds, the bank
    reference. Needs a records session (an SMS code to the enrolled phone)."""
    return await records.record_detail(
        pool,
        caller,
        payer_id,
        payment_id,
        session=session,
        key=records_session_key(settings),
        now=utcnow(),
        sealer=settings.sealer(),
    )


@router.get("/overview")
async def get_overview(
    payer_id: PayerPath, pool: PoolDep, caller: PayerReaderDep, settings: SettingsDep
) -> OverviewPublic:
    """Balances, years insured and this year's insurance status."""
    return await overview.overview(
        pool, caller, payer_id, now=utcnow(), bureau_names=dict(settings.bureau_names)
    )


YearQuery = Annotated[
    int | None, Query(ge=1900, le=9999, description="insurance year; default: this year")
]


async def _certificate(
    pool: PoolDep, caller: Caller, payer_id: str, year: int | None, setup: CertificatesDep
) -> CertificateRow:
    now = utcnow()
    wanted = year if year is not None else shanghai_day(now).year
    return await certificate_service.issue(pool, caller, payer_id, wanted, setup=setup, now=now)


@router.get("/certificate")
async def get_certificate(
    payer_id: PayerPath,
    pool: PoolDep,
    caller: PayerReaderDep,
    setup: CertificatesDep,
    year: YearQuery = None,
) -> CertificatePublic:
    """The insurance certificate (电子参保凭证) of ``year``: masked, signed, numbered;
    the same content is the same certificate."""
    return certificate_service.public(await _certificate(pool, caller, payer_id, year, setup))


@router.get("/certificate.html", response_class=HTMLResponse)
async def get_certificate_html(
    payer_id: PayerPath,
    pool: PoolDep,
    caller: PayerReaderDep,
    setup: CertificatesDep,
    year: YearQuery = None,
) -> Response:
    row = await _certificate(pool, caller, payer_id, year, setup)
    view = certificate_view(row.face, signature=row.signature, key_id=row.key_id)
    return html(certificate_page(view), headers=READ_HEADERS)


@router.get(
    "/certificate.pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}}},
)
async def get_certificate_pdf(
    payer_id: PayerPath,
    pool: PoolDep,
    caller: PayerReaderDep,
    setup: CertificatesDep,
    settings: SettingsDep,
    year: YearQuery = None,
) -> Response:
    row = await _certificate(pool, caller, payer_id, year, setup)
    view = certificate_view(row.face, signature=row.signature, key_id=row.key_id)
    pdf = await run_in_threadpool(certificate_pdf, view, font_path=settings.receipt_font)
    return Response(
        pdf,
        media_type="application/pdf",
        headers={
            "Content-Disposition": f'inline; filename="certificate-{row.number}.pdf"',
            **READ_HEADERS,
        },
    )


@certificates.post("/verify", dependencies=PUBLIC)
async def verify_certificate(
    body: CertificateVerifyCreate, pool: PoolDep, setup: CertificatesDep
) -> CertificateVerificationPublic:
    """查验: number and check code → the masked face, its signature and key id, and
    whether it is still current."""
    return await certificate_service.verify(
        pool, body.number, body.check_code, setup=setup, now=utcnow()
    )


@certificates.get("/public-key")
async def get_certificate_public_key(setup: CertificatesDep) -> PublicKeyPublic:
    """The key that signs certificates (Ed25519 over the face's canonical JSON)."""
    signer = setup.signer
    return PublicKeyPublic(
        key_id=signer.key_id, algorithm=ALGORITHM, public_key=signer.public_key_b64
    )
