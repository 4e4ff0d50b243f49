"""Ledger HTTP API (DESIGN.md "Contract: ledger API").

``create_app`` only builds the app: state, shared error handlers, request logging,
health and the routers. Account reads (balance, statement) are here and take the
caller keys; the public receipt routes (JSON, HTML, PDF, 查验) are in
``services.ledger.receipts.routes``, settlement (days, bureau files, reconciliation,
journal checkpoints) in ``services.ledger.settlement.routes``; the resident's records,
overview and insurance certificate in ``services.ledger.residents.routes``.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, FastAPI, Query

from services.ledger import accounts
from services.ledger.config import LedgerSettings
from services.ledger.deps import AccountReaderDep, PoolDep
from services.ledger.receipts import routes as receipt_routes
from services.ledger.receipts.ratelimit import SharedRateLimiter
from services.ledger.residents import routes as resident_routes
from services.ledger.residents.certificates import CertificateSetup
from services.ledger.residents.keys import certificate_check_key, certificate_signer
from services.ledger.schemas import AccountPublic, StatementPublic
from services.ledger.settlement import routes as settlement_routes
from services.ledger.settlement.service import SettlementSetup
from services.ledger.signing import LedgerSigners, ReceiptSigner
from shared.http import (
    CallerKeys,
    add_healthz,
    document_api,
    install_error_handlers,
    install_request_logging,
)
from shared.metrics import add_metrics, outbox_backlog

router = APIRouter(prefix="/v1")


@router.get("/accounts/{account_id}")
async def get_account(account_id: str, pool: PoolDep, caller: AccountReaderDep) -> AccountPublic:
    """A payer's account only for its owning caller (and operators); else 404."""
    return await accounts.account_balance(pool, caller, account_id)


@router.get("/accounts/{account_id}/statement")
async def get_statement(
    account_id: str,
    pool: PoolDep,
    caller: AccountReaderDep,
    after_seq: Annotated[int, Query(ge=0, description="lines after this journal seq")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="lines per page")] = 100,
) -> StatementPublic:
    """The account's statement: each journal entry that moved it, oldest first."""
    return await accounts.account_statement(
        pool, caller, account_id, after_seq=after_seq, limit=limit
    )


def create_app(
    settings: LedgerSettings,
    pool: asyncpg.Pool,
    *,
    signers: LedgerSigners | None = None,
    signer: ReceiptSigner | None = None,
    settlement: SettlementSetup | None = None,
) -> FastAPI:
    """``signers`` default to the settings' (one key per purpose); a lone ``signer``
    (tests) signs every purpose."""
    app = FastAPI(title="Yibao ledger", version="1", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.pool = pool
    if signers is None:
        signers = LedgerSigners.undivided(signer) if signer else settings.signers()
    app.state.signers = signers
    app.state.signer = signers.receipts
    app.state.settlement = settlement or settings.settlement_setup(signers)
    app.state.public_limiter = SharedRateLimiter(
        settings.verify_rate_per_minute, trusted_proxies=settings.proxy_networks()
    )
    app.state.caller_keys = CallerKeys.from_settings(settings)
    app.state.body_limits = settlement_routes.BODY_LIMITS
    app.state.certificates = CertificateSetup(
        signer=certificate_signer(settings),
        check_key=certificate_check_key(settings),
        bureau_names=dict(settings.bureau_names),
        sealer=settings.sealer(),
    )
    install_error_handlers(app)
    install_request_logging(app)

    async def ping() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, ping)
    app.include_router(router)
    app.include_router(settlement_routes.router)
    app.include_router(receipt_routes.router)
    app.include_router(receipt_routes.pages)
    app.include_router(resident_routes.router)
    app.include_router(resident_routes.certificates)
    add_metrics(app, "ledger", samplers=[("outbox", outbox_backlog(pool))])
    document_api(app)
    return app
