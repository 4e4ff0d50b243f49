"""The insurance certificate (电子参保凭证, issue 12): issue, show, verify.

A certificate states, for one payer as the insured person and one year, per scheme and
region: the bureau, the validity period and the paid periods (premiums in force: paid
and not fully refunded, by any payer of the same caller), with the person masked (张*,
the ID number as masked on the receipts). It is signed like a receipt (Ed25519 over the
canonical JSON of the face; ``keys.certificate_signer``), numbered, with a check code,
and stored: the same content for the same payer and year is the same certificate;
verification (``POST /v1/certificates/verify``, public, rate-limited) is a look-up by
number and check code (a wrong check code answers like an unknown number) that also
says whether the certificate is still ``current`` (what the journal shows today: a
premium refunded since makes it outdated).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.ledger import owners
from services.ledger.domain.receipts import sign_face
from services.ledger.domain.residents import (
    certificate_check_code,
    certificate_content,
    certificate_face,
    certificate_number,
    content_sha256,
    coverage,
)
from services.ledger.owners import PayerOwner
from services.ledger.receipts.service import same_check_code
from services.ledger.residents import store
from services.ledger.residents.records import EVER, insured_records
from services.ledger.residents.store import CertificateRow
from services.ledger.schemas import CertificatePublic, CertificateVerificationPublic
from services.ledger.signing import ALGORITHM, ReceiptSigner
from shared.crypto import Sealer
from shared.errors import NotFound
from shared.http import Caller
from shared.money import shanghai_day
from shared.regions import bureau_name

NOT_VALID = CertificateVerificationPublic(valid=False)


@dataclass(frozen=True)
class CertificateSetup:
    signer: ReceiptSigner
    check_key: bytes
    bureau_names: dict[str, str]
    sealer: Sealer | None = None  # opens the person keys of names sealed on receipts


def _nothing_paid(payer_id: str, year: int) -> NotFound:
    return NotFound(
        f"payer {payer_id} has no premium in force for {year} (paid and not fully"
        " refunded); a certificate states paid periods: pay the premium, or ask for"
        " another year",
        param="year",
    )


async def _content(
    pool: asyncpg.Pool, owner: PayerOwner, year: int, setup: CertificateSetup, now: datetime
) -> dict[str, Any] | None:
    """What the payer's certificate for ``year`` states today; None if nothing is paid."""
    premiums = await insured_records(pool, owner, EVER, setup.sealer)
    covered = coverage(premiums, year, shanghai_day(now))
    if not covered:
        return None
    latest = next((r for r in premiums if r.insured_name), None)  # newest first
    regions = {c.region for c in covered}
    return certificate_content(
        year,
        insured_name=(latest.insured_name if latest else None) or "",
        insured_id_number_masked=(latest.insured_id_number_masked if latest else None) or "",
        coverages=covered,
        bureau_names={r: bureau_name(r, setup.bureau_names) for r in regions},
    )


async def issue(
    pool: asyncpg.Pool,
    caller: Caller,
    payer_id: str,
    year: int,
    *,
    setup: CertificateSetup,
    now: datetime,
) -> CertificateRow:
    """The payer's certificate for ``year``: the one already issued for this content,
    else a new one, signed and stored."""
    owner = await owners.owned_payer(pool, caller, payer_id)
    content = await _content(pool, owner, year, setup, now)
    if content is None:
        raise _nothing_paid(payer_id, year)
    digest = content_sha256(content)
    found = await store.certificate_with(pool, payer_id, year, digest)
    if found is not None:
        return found
    number = certificate_number(year, await store.next_certificate_number(pool))
    check = certificate_check_code(setup.check_key, number, digest)
    face = certificate_face(content, number=number, check=check, issued_at=now)
    row = CertificateRow(
        number=number,
        payer_id=payer_id,
        year=year,
        check_code=check,
        face=face,
        signature=sign_face(face, setup.signer),
        key_id=setup.signer.key_id,
        issued_at=now,
        verify_count=0,
        content_sha256=digest,
    )
    return await store.insert_certificate(pool, row, caller_id=owner.caller_id)


async def still_current(
    pool: asyncpg.Pool, row: CertificateRow, setup: CertificateSetup, now: datetime
) -> bool:
    """Whether the journal still states what ``row`` states (a premium refunded since,
    or another paid, makes it outdated: ask for a new one)."""
    owner = await owners.owner_of(pool, row.payer_id)
    if owner is None:
        return False
    content = await _content(pool, owner, row.year, setup, now)
    return content is not None and content_sha256(content) == row.content_sha256


def public(row: CertificateRow) -> CertificatePublic:
    return CertificatePublic(
        number=row.number,
        check_code=row.check_code,
        year=row.year,
        certificate=dict(row.face),
        signature=row.signature,
        key_id=row.key_id,
        algorithm=ALGORITHM,
        issued_at=row.issued_at,
        checked_count=row.verify_count,
    )


async def verify(
    pool: asyncpg.Pool, number: str, check: str, *, setup: CertificateSetup, now: datetime
) -> CertificateVerificationPublic:
    """查验: the masked face when number and check code match, and whether it is still
    current; counted once."""
    row = await store.find_certificate(pool, number)
    if row is None or not same_check_code(check, row.check_code):
        return NOT_VALID
    return CertificateVerificationPublic(
        valid=True,
        current=await still_current(pool, row, setup, now),
        certificate=dict(row.face),
        signature=row.signature,
        key_id=row.key_id,
        algorithm=ALGORITHM,
        checked_count=await store.count_certificate_check(pool, number),
    )
