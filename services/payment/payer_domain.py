"""Rules of enrolled payers. Pure: no I/O.

A payer (the caller's ``payer_id``) belongs to the caller that enrolled it, by its
first payment or by ``PUT /v1/payers/{payer_id}``. Its phone is the one codes and
notices go to; changing it is its own verified step (a code to the new phone:
``POST /v1/payers/{payer_id}/phone-changes``), so an enrolment that names another
phone, or another person, is refused.

Family accounts (家庭共济): a payer binds close relatives, each an enrolled payer of the
same caller whose person (keyed ID hash) is known, confirmed by a code to the
relative's phone. A personal medical account pays only for its payer or a bound
relative.
"""

from __future__ import annotations

from shared.errors import NotFound
from shared.events import Relation


def mask_name(name: str) -> str:
    """张三 → 张*, 欧阳娜娜 → 欧***: the first character only."""
    return name[:1] + "*" * (len(name) - 1)


def cap_identity(
    enrolled_id_hash: str | None, relation: Relation, beneficiary_id_hash: str
) -> str | None:
    """The person behind a payment's payer (keyed ID hash), whom the daily cap follows:
    the payer's enrolled ID, else the beneficiary's when the payer pays for itself
    (relation ``self``), else unknown (the cap then follows the payer id)."""
    if enrolled_id_hash is not None:
        return enrolled_id_hash
    if relation == "self":
        return beneficiary_id_hash
    return None


def enrolment_conflict(
    *,
    enrolled_phone: str,
    enrolled_id_hash: str | None,
    phone: str,
    id_hash: str,
) -> str | None:
    """Why enrolling an already enrolled payer again with ``phone`` and ``id_hash``
    would change it (then it is refused), or None (the same payer: idempotent)."""
    if phone != enrolled_phone:
        return (
            "this payer is enrolled with another phone; changing a payer's phone is its own"
            " verified step (POST /v1/payers/{payer_id}/phone-changes), not a new enrolment"
        )
    if enrolled_id_hash is not None and id_hash != enrolled_id_hash:
        return "this payer is enrolled as another person (ID number); enrol a new payer id"
    return None


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


def binding_problem(
    *,
    payer_id: str,
    payer_id_hash: str | None,
    relative_payer_id: str,
    relative_id_hash: str | None,
) -> tuple[str, str] | None:
    """Why ``relative_payer_id`` cannot be bound as a relative of ``payer_id`` (both
    enrolled by the same caller): (error code, message), or None."""
    if relative_payer_id == payer_id:
        return "relative_is_payer", "a payer is not its own relative; name another enrolled payer"
    if relative_id_hash is None:
        return (
            "relative_not_identified",
            "the relative's ID number is not known; enrol the relative with"
            " PUT /v1/payers/{relative_payer_id} (phone, id_number, name) first",
        )
    if payer_id_hash is not None and relative_id_hash == payer_id_hash:
        return (
            "relative_is_payer",
            "the relative is the same person as the payer (same ID number)",
        )
    return None


def needs_bound_relative(
    *,
    method: str,
    relation: Relation,
    payer_id_hash: str | None,
    beneficiary_id_hash: str,
) -> bool:
    """Whether a payment must be for a bound relative: a personal medical account
    paying for a beneficiary declared as a relative (relation other than ``self``) who
    is not the payer's own enrolled person.

    A beneficiary declared ``self`` is taken as the payer, as everywhere else (the first
    such payment even sets the payer's person); it is not compared with the enrolled ID
    number here."""
    if method != "medical_account" or relation == "self":
        return False
    return payer_id_hash != beneficiary_id_hash


def code_step(purpose: str, subject: str) -> str | None:
    """The subject a code's step is told apart by (its resend spacing, and which older
    code a new one supersedes): None for a phone change, whatever the new phone (one
    phone change at a time per payer, and its replaced phone is not told of one a
    second), else the subject (one binding per relative)."""
    return None if purpose == "phone_change" else subject
