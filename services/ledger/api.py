"""Ledger HTTP API (DESIGN.md "Contract: ledger API").

Account reads (balance, statement) take the caller keys. Receipt reads and
verification are public and rate-limited per client address
(``services.ledger.receipt_api``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import APIRouter, FastAPI, Header, Query
from pydantic import BaseModel

from services.ledger import store
from services.ledger.domain import is_well_formed_account
from services.ledger.ratelimit import RateLimiter
from services.ledger.receipt_api import install_receipt_routes
from services.ledger.signing import ReceiptSigner
from shared.errors import NotFound
from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging

__all__ = ["AccountPublic", "RateLimiter", "StatementPublic", "create_app"]


class AccountPublic(BaseModel):
    account_id: str
    balance: int
    currency: str


class StatementLinePublic(BaseModel):
    seq: int
    payment_id: str
    amount: int
    balance_after: int
    posted_at: datetime


class StatementPublic(BaseModel):
    account_id: str
    currency: str
    lines: list[StatementLinePublic]
    next_after_seq: int | None  # pass as ``after_seq`` for the next page; None at the end


def _unknown_account(account_id: str) -> NotFound:
    return NotFound(
        f"no account {account_id!r}; ids look like wallet:<payer_id>, "
        "medical:<payer_id> or bureau:<6-digit region>:premium",
        param="account_id",
    )


def create_app(
    *, pool: asyncpg.Pool, signer: ReceiptSigner, api_keys: list[str], rate_per_minute: int = 30,
    font_path: str | None = None,
) -> FastAPI:
    app = FastAPI(title="Yibao ledger", version="1")
    install_error_handlers(app)
    install_request_logging(app)
    callers = CallerKeys(api_keys)
    router = APIRouter(prefix="/v1")

    async def db_check() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, db_check)

    @router.get("/accounts/{account_id}")
    async def get_account(
        account_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> AccountPublic:
        callers.caller_of(authorization)
        row = await store.account(pool, account_id)
        if row is not None:
            return AccountPublic(
                account_id=account_id, balance=row["balance"], currency=row["currency"]
            )
        if not is_well_formed_account(account_id):
            raise _unknown_account(account_id)
        return AccountPublic(account_id=account_id, balance=0, currency="CNY")

    @router.get("/accounts/{account_id}/statement")
    async def get_statement(
        account_id: str,
        authorization: Annotated[str | None, Header()] = None,
        after_seq: Annotated[int, Query(ge=0, description="lines after this journal seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000, description="lines per page")] = 100,
    ) -> StatementPublic:
        """The account's statement: each journal entry that moved it, oldest first."""
        callers.caller_of(authorization)
        row = await store.account(pool, account_id)
        if row is None and not is_well_formed_account(account_id):
            raise _unknown_account(account_id)
        rows = await store.statement(pool, account_id, after_seq=after_seq, limit=limit)
        lines = [StatementLinePublic(**dict(r)) for r in rows]
        return StatementPublic(
            account_id=account_id,
            currency=row["currency"] if row is not None else "CNY",
            lines=lines,
            next_after_seq=lines[-1].seq if len(lines) == limit else None,
        )

    app.include_router(router)
    install_receipt_routes(
        app, pool=pool, signer=signer, limiter=RateLimiter(rate_per_minute), font_path=font_path
    )
    return app
