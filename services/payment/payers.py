"""Enrolled payers: who may act for whom.

A ``payer_id`` belongs to the caller key that enrolled it: by its first payment (with
that request's ``payer_phone`` and, when the beneficiary is the payer itself, the
beneficiary's ID number and name), or by ``PUT /v1/payers/{payer_id}``. Codes and
notices go to the enrolled phone: every payment's events carry the enrolled phone,
sealed again for that payment, whatever ``payer_phone`` a later request names.
Changing the phone is its own verified step, not offered yet.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import asyncpg
import structlog

from services.payment import payer_domain, store
from services.payment.config import PaymentSettings
from services.payment.schemas import PayerCreate, PayerPublic, PaymentCreate
from services.payment.store import Payer
from shared.crypto import keyed_hash, phone_aad
from shared.errors import Conflict, NotFound
from shared.masking import mask_id_number, mask_phone
from shared.money import utcnow

log = structlog.get_logger(__name__)


def payer_not_found(payer_id: str) -> NotFound:
    """The answer for a payer this caller did not enrol, whether another caller did or
    nobody did.

    404 and not 403: a 403 would tell the caller that the payer exists and belongs to
    someone else, an oracle for probing other callers' payers (and, through them,
    their payments, refunds and caps). The same 404 for "not yours" and "no such
    payer" reveals nothing. The same holds for payments, refunds, daily caps and
    notification lists of another caller.
    """
    return NotFound(
        f"no payer {payer_id!r} for this caller; check the id, or enrol it first",
        param="payer_id",
    )


def new_enrolment_id() -> str:
    """``py_`` + 120 random bits in base32: what an explicitly enrolled phone is sealed
    under (a payment-enrolled phone is sealed under its first payment's id)."""
    return "py_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


@dataclass(frozen=True)
class PayerOfPayment:
    """What a payment carries of its enrolled payer."""

    phone_masked: str
    phone_sealed: str  # the enrolled phone, sealed with phone_aad(payment_id)
    payer_id_hash: str | None  # the person, for risk's daily cap


def payer_view(payer: Payer) -> PayerPublic:
    return PayerPublic(
        payer_id=payer.payer_id,
        phone=payer.phone_masked,
        id_number=payer.id_number_masked,
        name=payer_domain.mask_name(payer.name) if payer.name is not None else None,
        created_at=payer.created_at,
    )


class Payers:
    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._sealer = settings.sealer()
        self._hash_key = settings.hash_key_bytes()

    def _id_hash(self, id_number: str) -> str:
        return keyed_hash(self._hash_key, "id", id_number)

    def _enrolled_phone(self, payer: Payer) -> str:
        return self._sealer.open(payer.phone_sealed, aad=phone_aad(payer.phone_sealed_for))

    async def of_payment(
        self, conn: asyncpg.Connection, caller: str, body: PaymentCreate, payment_id: str
    ) -> PayerOfPayment:
        """The payer of a new payment, enrolled now if never seen, locked until the
        transaction ends; 404 when another caller enrolled it."""
        beneficiary = body.beneficiary
        id_hash = self._id_hash(beneficiary.id_number)
        is_self = beneficiary.relation == "self"
        candidate = Payer(
            payer_id=body.payer_id,
            caller=caller,
            phone_masked=mask_phone(body.payer_phone),
            phone_sealed=self._sealer.seal(body.payer_phone, aad=phone_aad(payment_id)),
            phone_sealed_for=payment_id,
            id_number_hash=id_hash if is_self else None,
            id_number_masked=mask_id_number(beneficiary.id_number) if is_self else None,
            name=beneficiary.name if is_self else None,
            created_at=utcnow(),
        )
        payer = await store.enroll_payer(conn, candidate, first_payment_id=payment_id)
        if payer.caller != caller:
            raise payer_not_found(body.payer_id)
        if not payer.phone_sealed:  # erased (issue 11): this payment's phone enrols again
            payer = await enrol_phone_again(conn, candidate)
        if payer.id_number_hash is None and is_self:
            payer = await store.complete_payer_identity(
                conn,
                payer.payer_id,
                id_number_hash=id_hash,
                id_number_masked=mask_id_number(beneficiary.id_number),
                name=beneficiary.name,
            )
        phone = self._enrolled_phone(payer)
        if phone != body.payer_phone:
            log.info("payer_phone_not_enrolled_ignored", payer_phone=payer.phone_masked)
        return PayerOfPayment(
            phone_masked=payer.phone_masked,
            phone_sealed=self._sealer.seal(phone, aad=phone_aad(payment_id)),
            payer_id_hash=payer_domain.cap_identity(
                payer.id_number_hash, beneficiary.relation, id_hash
            ),
        )

    async def enroll(self, caller: str, payer_id: str, body: PayerCreate) -> PayerPublic:
        """``PUT /v1/payers/{payer_id}``: enrol the payer, or answer it again to its owner
        (idempotent); 409 when it would change the phone or the person; 404 when another
        caller enrolled it."""
        id_hash = self._id_hash(body.id_number)
        enrolment_id = new_enrolment_id()
        candidate = Payer(
            payer_id=payer_id,
            caller=caller,
            phone_masked=mask_phone(body.phone),
            phone_sealed=self._sealer.seal(body.phone, aad=phone_aad(enrolment_id)),
            phone_sealed_for=enrolment_id,
            id_number_hash=id_hash,
            id_number_masked=mask_id_number(body.id_number),
            name=body.name,
            created_at=utcnow(),
        )
        async with self._pool.acquire() as conn, conn.transaction():
            payer = await store.enroll_payer(conn, candidate, first_payment_id=None)
            if payer.caller != caller:
                raise payer_not_found(payer_id)
            if not payer.phone_sealed:  # erased (issue 11): enrolled again as asked
                payer = await enrol_phone_again(conn, candidate)
            if payer.phone_sealed_for != enrolment_id:  # enrolled before: same payer?
                problem = payer_domain.enrolment_conflict(
                    enrolled_phone=self._enrolled_phone(payer),
                    enrolled_id_hash=payer.id_number_hash,
                    phone=body.phone,
                    id_hash=id_hash,
                )
                if problem is not None:
                    raise Conflict(problem, code="payer_conflict", param="payer_id")
                if payer.id_number_hash is None:
                    payer = await store.complete_payer_identity(
                        conn,
                        payer_id,
                        id_number_hash=id_hash,
                        id_number_masked=candidate.id_number_masked or "",
                        name=body.name,
                    )
        log.info("payer_enrolled", payer_id=payer_id)
        return payer_view(payer)

    async def view(self, caller: str, payer_id: str) -> PayerPublic:
        """``GET /v1/payers/{payer_id}``: the caller's own payer, else 404."""
        payer = await store.get_payer(self._pool, payer_id)
        if payer is None or payer.caller != caller:
            raise payer_not_found(payer_id)
        return payer_view(payer)


# ------------------------------------------------------------ erasure (issue 11)


async def scrub_person(
    conn: asyncpg.Connection, person_hash: str | None, payer_id: str | None
) -> list[str]:
    """Erase the personal fields of the payer records of a person (by the keyed hash of
    their ID number) or of one payer: name, masked ID number, masked and sealed phone.
    The payer id (a pseudonym), its owner and the ID hash (the daily cap's person) stay.
    The payers scrubbed now, in id order; none when already scrubbed."""
    rows = await conn.fetch(
        "UPDATE payers SET name = NULL, id_number_masked = NULL, phone_masked = '',"
        " phone_sealed = '', updated_at = now()"
        " WHERE (id_number_hash = $1 OR payer_id = $2)"
        " AND (phone_sealed <> '' OR name IS NOT NULL OR id_number_masked IS NOT NULL)"
        " RETURNING payer_id",
        person_hash,
        payer_id,
    )
    return sorted(r["payer_id"] for r in rows)


async def enrol_phone_again(conn: asyncpg.Connection, candidate: Payer) -> Payer:
    """An erased payer's phone (and, when given, identity) enrolled again from
    ``candidate``, the request that names it next."""
    row = await conn.fetchrow(
        "UPDATE payers SET phone_masked = $2, phone_sealed = $3, phone_sealed_for = $4,"
        " id_number_masked = COALESCE(id_number_masked, $5), name = COALESCE(name, $6),"
        " updated_at = now() WHERE payer_id = $1 RETURNING payer_id, caller, phone_masked,"
        " phone_sealed, phone_sealed_for, id_number_hash, id_number_masked, name, created_at",
        candidate.payer_id,
        candidate.phone_masked,
        candidate.phone_sealed,
        candidate.phone_sealed_for,
        candidate.id_number_masked,
        candidate.name,
    )
    assert row is not None  # locked by enroll_payer in this transaction
    return Payer(**dict(row))
