"""Ledger HTTP API (DESIGN.md "Contract: ledger API").

Account reads take the caller keys. Receipt reads and verification are public and
rate-limited per client address. A failed verification answers exactly like an
unknown receipt, so it tells a guesser nothing.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from pydantic import BaseModel, ConfigDict, Field

from services.ledger import store
from services.ledger.domain import is_well_formed_account
from services.ledger.receipts import mask_name
from services.ledger.signing import ALGORITHM, ReceiptSigner
from shared.errors import NotFound, RateLimited
from shared.http import CallerKeys, add_healthz, install_error_handlers, install_request_logging

CODE_RE = r"^\d{8}$"
NUMBER_RE = r"^\d{10}$"
CHECK_RE = r"^[A-Za-z2-7]{6}$"


class AccountPublic(BaseModel):
    account_id: str
    balance: int
    currency: str


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


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token bucket per client address, in memory (per process)."""

    def __init__(self, per_minute: int, *, max_clients: int = 10_000) -> None:
        self._capacity = float(per_minute)
        self._rate = per_minute / 60.0
        self._max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self._max_clients:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self._capacity, now)
        bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.at) * self._rate)
        bucket.at = now
        if bucket.tokens < 1.0:
            wait = math.ceil((1.0 - bucket.tokens) / self._rate)
            raise RateLimited(
                f"too many receipt requests from this address; wait {wait} s and try again",
                details={"retry_after": wait},
            )
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no information."""
        full = [
            k for k, b in self._buckets.items()
            if b.tokens + (now - b.at) * self._rate >= self._capacity
        ]
        for key in full or list(self._buckets)[: self._max_clients // 2]:
            del self._buckets[key]


_NOT_VALID = VerificationPublic(valid=False, checked_count=0, receipt=None)


def _receipt_json(row: asyncpg.Record) -> dict[str, Any]:
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


def create_app(
    *, pool: asyncpg.Pool, signer: ReceiptSigner, api_keys: list[str], rate_per_minute: int = 30
) -> FastAPI:
    app = FastAPI(title="Yibao ledger", version="1")
    install_error_handlers(app)
    install_request_logging(app)
    callers = CallerKeys(api_keys)
    limiter = RateLimiter(rate_per_minute)
    router = APIRouter(prefix="/v1")

    async def db_check() -> None:
        await pool.fetchval("SELECT 1")

    add_healthz(app, db_check)

    def limit(request: Request) -> None:
        """A dependency: counted before the body is read, so bad input counts too."""
        limiter.take(request.client.host if request.client else "unknown")

    public = [Depends(limit)]

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
            raise NotFound(
                f"no account {account_id!r}; ids look like wallet:<payer_id>, "
                "medical:<payer_id> or bureau:<6-digit region>:premium",
                param="account_id",
            )
        return AccountPublic(account_id=account_id, balance=0, currency="CNY")

    @router.get("/receipts/public-key")
    async def public_key() -> PublicKeyPublic:
        return PublicKeyPublic(
            key_id=signer.key_id, algorithm=ALGORITHM, public_key=signer.public_key_b64
        )

    @router.get("/receipts/{code}/{number}", dependencies=public)
    async def get_receipt(code: str, number: str) -> dict[str, Any]:
        row = None
        if re.match(CODE_RE, code) and re.match(NUMBER_RE, number):
            row = await store.receipt(pool, code, number)
        if row is None:
            raise NotFound(
                f"no receipt {code}/{number}; check the 票据代码 (8 digits) and "
                "票据号码 (10 digits) printed on the receipt",
                param="number",
            )
        return _receipt_json(row)

    @router.post("/receipts/verify", dependencies=public)
    async def verify(body: ReceiptVerify) -> VerificationPublic:
        row = await store.receipt(pool, body.code, body.number)
        expected = row["check_code"] if row is not None else "\x00" * 6
        matches = hmac.compare_digest(body.check_code.upper().encode(), expected.encode())
        if row is None or not matches:
            return _NOT_VALID
        face = row["face"]
        count = await store.count_check(pool, body.code, body.number)
        return VerificationPublic(
            valid=True,
            checked_count=count,
            receipt=VerifiedReceipt(
                code=row["code"],
                number=row["number"],
                issue_date=face["issue_date"],
                payer_name=mask_name(face["payer_name"]),
                total=face["total"],
                currency=face.get("currency", "CNY"),
                payee=face["payee"],
            ),
        )

    app.include_router(router)
    return app
