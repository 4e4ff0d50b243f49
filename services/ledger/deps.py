"""The ledger API's dependencies, in one place: ``Annotated`` aliases reading what
``create_app`` put on ``request.app.state``."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request

from services.ledger.config import LedgerSettings
from services.ledger.receipts.ratelimit import SharedRateLimiter
from services.ledger.residents.certificates import CertificateSetup
from services.ledger.settlement.service import SettlementSetup
from services.ledger.signing import LedgerSigners, ReceiptSigner
from shared.http import Caller, require_role


def _settings(request: Request) -> LedgerSettings:
    settings: LedgerSettings = request.app.state.settings
    return settings


def _pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.app.state.pool
    return pool


def _signer(request: Request) -> ReceiptSigner:
    signer: ReceiptSigner = request.app.state.signer
    return signer


def _signers(request: Request) -> LedgerSigners:
    signers: LedgerSigners = request.app.state.signers
    return signers


def _public_limiter(request: Request) -> SharedRateLimiter:
    limiter: SharedRateLimiter = request.app.state.public_limiter
    return limiter


def _certificates(request: Request) -> CertificateSetup:
    setup: CertificateSetup = request.app.state.certificates
    return setup


def _settlement(request: Request) -> SettlementSetup:
    setup: SettlementSetup = request.app.state.settlement
    return setup


SettingsDep = Annotated[LedgerSettings, Depends(_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(_pool)]
SignerDep = Annotated[ReceiptSigner, Depends(_signer)]  # the receipts' key
SignersDep = Annotated[LedgerSigners, Depends(_signers)]  # every purpose's key
PublicLimiterDep = Annotated[SharedRateLimiter, Depends(_public_limiter)]
SettlementDep = Annotated[SettlementSetup, Depends(_settlement)]
CertificatesDep = Annotated[CertificateSetup, Depends(_certificates)]
CallerDep = Annotated[Caller, Depends(require_role("caller"))]
# Account reads: caller keys (a payer's accounts: its owner only), bureau keys (their
# region's), operators (everything); ``owners.may_read_account`` decides per account.
AccountReaderDep = Annotated[Caller, Depends(require_role("caller", "bureau", "operator"))]
# A payer's records, overview and certificate: its owning caller, or an operator.
PayerReaderDep = Annotated[Caller, Depends(require_role("caller", "operator"))]
OperatorDep = Annotated[Caller, Depends(require_role("operator"))]
# Settlement reads: an operator, or a bureau for its own region (``caller.region``).
SettlementReaderDep = Annotated[Caller, Depends(require_role("operator", "bureau"))]
