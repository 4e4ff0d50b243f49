"""The resident's routes (issue 12): records, record detail, overview. Each needs the
payer's owning caller key (or an operator's); another caller gets the 404 of a payer
nobody enrolled. Each route is one call into ``records`` or ``overview``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Path, Query

from services.ledger.deps import PayerReaderDep, PoolDep, SettingsDep
from services.ledger.domain.residents import RecordFilter
from services.ledger.residents import overview, records
from services.ledger.residents.keys import records_session_key
from services.ledger.schemas import OverviewPublic, RecordDetailPublic, RecordsPublic
from shared.money import utcnow

router = APIRouter(prefix="/v1/payers/{payer_id}", tags=["resident"])

PayerPath = Annotated[str, Path(max_length=128, description="the payer, as enrolled")]


@router.get("/records")
async def get_records(
    payer_id: PayerPath,
    pool: PoolDep,
    caller: PayerReaderDep,
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
    )


@router.get("/overview")
async def get_overview(
    payer_id: PayerPath, pool: PoolDep, caller: PayerReaderDep, settings: SettingsDep
) -> OverviewPublic:
    """Balances, years insured and this year's insurance status."""
    return await overview.overview(
        pool, caller, payer_id, now=utcnow(), bureau_names=dict(settings.bureau_names)
    )
