"""``GET /v1/payers/{payer_id}/overview``: the payer's wallet and personal medical
account balances, years insured, and this year's insurance status per scheme and region
(the premiums paid for the payer as the insured person, any payer of its caller)."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from services.ledger import owners, store
from services.ledger.domain.accounts import medical, wallet
from services.ledger.domain.residents import coverage, schemes_and_regions, years_insured
from services.ledger.residents.records import EVER, insured_records
from services.ledger.schemas import CoveragePublic, OverviewPublic
from shared.http import Caller
from shared.money import shanghai_day
from shared.regions import bureau_name


async def _balance(pool: asyncpg.Pool, account_id: str) -> int:
    found = await store.account_balance(pool, account_id)
    return found.balance if found is not None else 0


async def overview(
    pool: asyncpg.Pool,
    caller: Caller,
    payer_id: str,
    *,
    now: datetime,
    bureau_names: dict[str, str],
) -> OverviewPublic:
    owner = await owners.owned_payer(pool, caller, payer_id)
    premiums = await insured_records(pool, owner, EVER)
    today = shanghai_day(now)
    by_scheme = years_insured(premiums)
    this_year = {(c.scheme, c.region): c for c in coverage(premiums, today.year, today)}
    insurance = []
    for scheme, region in schemes_and_regions(premiums):
        c = this_year.get((scheme, region))
        insurance.append(
            CoveragePublic(
                scheme=scheme,
                region=region,
                bureau=bureau_name(region, bureau_names) if region else "",
                year=today.year,
                status="insured" if c is not None and c.insured else "not_insured",
                periods=list(c.periods) if c else [],
                valid_from=c.valid_from.isoformat() if c and c.valid_from else None,
                valid_to=c.valid_to.isoformat() if c and c.valid_to else None,
            )
        )
    return OverviewPublic(
        payer_id=payer_id,
        currency="CNY",
        wallet_balance=await _balance(pool, wallet(payer_id)),
        medical_account_balance=await _balance(pool, medical(payer_id)),
        years_insured=len({y for ys in by_scheme.values() for y in ys}),
        years_insured_by_scheme=by_scheme,
        current_year=today.year,
        insurance=insurance,
    )
