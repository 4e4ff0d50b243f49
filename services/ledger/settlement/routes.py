"""Settlement routes (DESIGN.md "Contract additions: settlement") and the journal's
signed checkpoint. Each route is one call into ``settlement.service``.

Roles: closing and reconciling need an operator key; a day's figures and a bureau's
file are for operators, and for a bureau key its own region only (another region's
file is 404, its figures are left out). The checkpoint and the key are public.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from services.ledger.deps import (
    OperatorDep,
    PoolDep,
    SettlementDep,
    SettlementReaderDep,
    SignersDep,
)
from services.ledger.domain.clearing import parse_day
from services.ledger.receipts.service import public_keys
from services.ledger.schemas import (
    CheckpointPublic,
    DayPublic,
    PublicKeyPublic,
    ReconciliationPublic,
    SigningKeyPublic,
)
from services.ledger.settlement import service
from services.ledger.signing import ALGORITHM, SigningPurpose
from shared.errors import ValidationFailed
from shared.regions import REGION_RE

router = APIRouter(prefix="/v1")

MAX_STATEMENT_BYTES = 20 * 1024 * 1024
RECONCILIATIONS = "/v1/settlement/days/{day}/reconciliations"
# The API edge (shared.http) refuses a larger body with 413 before anything reads it.
BODY_LIMITS = {RECONCILIATIONS: MAX_STATEMENT_BYTES}


@router.post("/settlement/days/{day}/close")
async def close_day(
    day: str,
    pool: PoolDep,
    setup: SettlementDep,
    caller: OperatorDep,
    force: Annotated[
        bool, Query(description="close before the cut-off (development, test)")
    ] = False,
) -> DayPublic:
    return await service.close_and_read(pool, setup, parse_day(day), force=force, caller=caller)


@router.get("/settlement/days/{day}")
async def read_day(day: str, pool: PoolDep, caller: SettlementReaderDep) -> DayPublic:
    return await service.read_day(pool, parse_day(day), caller)


@router.get("/settlement/days/{day}/bureaus/{region}.csv", response_class=Response)
async def read_bureau_file(
    day: str, region: str, pool: PoolDep, setup: SettlementDep, caller: SettlementReaderDep
) -> Response:
    if not REGION_RE.fullmatch(region):
        raise ValidationFailed(f"region {region!r} is not 6 digits", param="region")
    signed = await service.bureau_file(pool, setup.files, parse_day(day), region, caller)
    return Response(
        signed.body,
        media_type="text/csv; charset=utf-8",
        headers={
            "X-Signature": signed.signature,
            "X-Key-Id": signed.key_id,
            "X-Signature-Algorithm": ALGORITHM,
            "X-Journal-Checkpoint": signed.checkpoint,
            "Content-Disposition": f'attachment; filename="{signed.filename}"',
        },
    )


@router.post(RECONCILIATIONS.removeprefix("/v1"))
async def reconcile(
    day: str, request: Request, pool: PoolDep, setup: SettlementDep, _caller: OperatorDep
) -> ReconciliationPublic:
    parsed = parse_day(day)
    raw = await request.body()  # at most MAX_STATEMENT_BYTES (BODY_LIMITS)
    try:
        text = raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationFailed(
            f"the statement is not UTF-8 (byte {exc.start}); send the bank's CSV as it came",
            param="body",
        ) from exc
    return await service.reconcile_statement(pool, setup, parsed, text)


@router.get("/journal/checkpoint")
async def read_checkpoint(pool: PoolDep, setup: SettlementDep) -> CheckpointPublic:
    return await service.journal_checkpoint(pool, setup)


@router.get("/journal/public-key")
async def read_journal_key(setup: SettlementDep) -> PublicKeyPublic:
    """The key that signs new journal entries and checkpoints (``purpose: journal``);
    settlement files name theirs in ``X-Key-Id``; every key with its purpose is at
    ``/v1/journal/public-keys`` (the same list as ``/v1/receipts/public-keys``)."""
    signer = setup.signer
    return PublicKeyPublic(
        key_id=signer.key_id,
        algorithm=ALGORITHM,
        public_key=signer.public_key_b64,
        purpose=SigningPurpose.JOURNAL,
    )


@router.get("/journal/public-keys")
async def read_journal_keys(pool: PoolDep, signers: SignersDep) -> list[SigningKeyPublic]:
    """Every key an auditor needs, each with its purpose (``GET /v1/receipts/public-keys``)."""
    return await public_keys(pool, signers)
