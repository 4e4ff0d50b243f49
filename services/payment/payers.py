"""Enrolled payers: who may act for whom.

A ``payer_id`` belongs to the caller key that enrolled it: by its first payment (with
that request's ``payer_phone`` and, when the beneficiary is the payer itself, the
beneficiary's ID number and name), or by ``PUT /v1/payers/{payer_id}``. Codes and
notices go to the enrolled phone: every payment's events carry the enrolled phone,
sealed again for that payment, whatever ``payer_phone`` a later request names.

Changing the phone is its own verified step: ``POST /v1/payers/{payer_id}/phone-changes``
sends a code to the NEW phone (proving the resident holds it) and a notice to the
enrolled one; the code, posted to ``…/phone-changes/{id}/verification``, makes the new
phone the enrolled one (sealed anew), for every later code and notice. Payments
already requested keep the phone they were made with.

Each enrolment (explicit or by a first payment) publishes ``PayerEnrolled`` in its
transaction, and again when a payer enrolled without a known person gets one.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass

import asyncpg
import structlog

from services.payment import payer_domain, store
from services.payment.config import PaymentSettings
from services.payment.payer_codes import PayerCodes, owned_payer
from services.payment.payer_domain import payer_not_found
from services.payment.payments import stage_events
from services.payment.schemas import (
    PayerCreate,
    PayerPublic,
    PaymentCreate,
    PhoneChangeCreate,
    PhoneChangePublic,
)
from services.payment.store import Payer, StoredPayerCode
from shared.crypto import KeyPurpose, keyed_hash, phone_aad
from shared.errors import Conflict, DomainError
from shared.events import PayerEnrolled
from shared.masking import mask_id_number, mask_phone
from shared.money import utcnow

log = structlog.get_logger(__name__)


def new_enrolment_id() -> str:
    """``py_`` + 120 random bits in base32: what an explicitly enrolled phone is sealed
    under (a payment-enrolled phone is sealed under its first payment's id)."""
    return "py_" + base64.b32encode(secrets.token_bytes(15)).decode().lower()


@dataclass(frozen=True)
class PayerOfPayment:
    """What a payment carries of its enrolled payer."""

    phone_masked: str
    phone: str  # the enrolled phone, clear: sealed per person for the events, never logged
    payer_id_hash: str | None  # the person, for risk's daily cap


def payer_view(payer: Payer) -> PayerPublic:
    return PayerPublic(
        payer_id=payer.payer_id,
        phone=payer.phone_masked,
        id_number=payer.id_number_masked,
        name=payer_domain.mask_name(payer.name) if payer.name is not None else None,
        created_at=payer.created_at,
    )


__all__ = ["Payers", "payer_not_found", "payer_view"]


class Payers:
    def __init__(self, settings: PaymentSettings, pool: asyncpg.Pool, codes: PayerCodes) -> None:
        self._pool = pool
        self._sealer = settings.sealer()
        self._id_key = settings.hash_key_for(KeyPurpose.ID_HASH)
        self._topic = settings.topics.payments
        self._codes = codes

    async def _enrolled(self, conn: asyncpg.Connection, payer: Payer) -> None:
        """Publish ``PayerEnrolled`` (in the caller's transaction): the payer, its owner
        and its person's keyed ID hash when known."""
        event = PayerEnrolled(
            payer_id=payer.payer_id,
            caller_id=payer.caller,
            id_number_hash=payer.id_number_hash,
            enrolled_at=payer.created_at,
        )
        await stage_events(
            conn,
            self._topic,
            [event],
            key=payer.payer_id,
            correlation_id=payer.payer_id,
            causation_id=None,
        )

    def _id_hash(self, id_number: str) -> str:
        return keyed_hash(self._id_key, "id", id_number)

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
        if payer.phone_sealed_for == payment_id:  # enrolled by this payment
            await self._enrolled(conn, payer)
        elif payer.id_number_hash is None and is_self:
            payer = await store.complete_payer_identity(
                conn,
                payer.payer_id,
                id_number_hash=id_hash,
                id_number_masked=mask_id_number(beneficiary.id_number),
                name=beneficiary.name,
            )
            await self._enrolled(conn, payer)
        phone = self._enrolled_phone(payer)
        if phone != body.payer_phone:
            log.info("payer_phone_not_enrolled_ignored", payer_phone=payer.phone_masked)
        return PayerOfPayment(
            phone_masked=payer.phone_masked,
            phone=phone,
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
            if payer.phone_sealed_for == enrolment_id:
                await self._enrolled(conn, payer)
            else:  # enrolled before: same payer?
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
                    await self._enrolled(conn, payer)
        log.info("payer_enrolled", payer_id=payer_id)
        return payer_view(payer)

    async def view(self, caller: str, payer_id: str) -> PayerPublic:
        """``GET /v1/payers/{payer_id}``: the caller's own payer, else 404."""
        payer = await store.get_payer(self._pool, payer_id)
        if payer is None or payer.caller != caller:
            raise payer_not_found(payer_id)
        return payer_view(payer)

    async def request_phone_change(
        self, caller: str, payer_id: str, body: PhoneChangeCreate
    ) -> PhoneChangePublic:
        """``POST /v1/payers/{payer_id}/phone-changes``: a code to the new phone, a notice
        to the enrolled one; 422 ``phone_unchanged`` for the enrolled phone itself."""
        async with self._pool.acquire() as conn, conn.transaction():
            payer = await owned_payer(conn, caller, payer_id)
            enrolled = self._enrolled_phone(payer)
            if body.phone == enrolled:
                raise DomainError(
                    "this is already the payer's enrolled phone; nothing to change",
                    code="phone_unchanged",
                    param="phone",
                )
            issued = await self._codes.issue(
                conn,
                payer=payer,
                purpose="phone_change",
                subject=self._codes.phone_hash(body.phone),
                phone=body.phone,
                replaced_phone=enrolled,
            )
        return PhoneChangePublic(
            id=issued.code_id,
            payer_id=payer_id,
            phone=issued.phone_masked,
            status="pending",
            expires_at=issued.expires_at,
        )

    async def confirm_phone_change(
        self, caller: str, payer_id: str, change_id: str, code: str
    ) -> PayerPublic:
        """``POST /v1/payers/{payer_id}/phone-changes/{id}/verification``: the right code
        makes the new phone the enrolled one, sealed anew under a new enrolment id."""

        async def apply(conn: asyncpg.Connection, payer: Payer, stored: StoredPayerCode) -> Payer:
            phone = self._codes.open_phone(stored)
            enrolment_id = new_enrolment_id()
            changed = await store.change_payer_phone(
                conn,
                payer.payer_id,
                phone_masked=mask_phone(phone),
                phone_sealed=self._sealer.seal(phone, aad=phone_aad(enrolment_id)),
                phone_sealed_for=enrolment_id,
            )
            log.info(
                "payer_phone_changed",
                payer_id=payer.payer_id,
                old_phone=payer.phone_masked,
                phone=changed.phone_masked,
            )
            return changed

        changed = await self._codes.confirm(
            change_id,
            payer_id=payer_id,
            caller=caller,
            purpose="phone_change",
            presented=code,
            on_pass=apply,
        )
        return payer_view(changed)


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
