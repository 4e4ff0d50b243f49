"""Rules of enrolled payers. Pure: no I/O.

A payer (the caller's ``payer_id``) belongs to the caller that enrolled it, by its
first payment or by ``PUT /v1/payers/{payer_id}``. Its phone is the one codes and
notices go to; changing it is its own verified step (not offered yet), so an
enrolment that names another phone, or another person, is refused.
"""

from __future__ import annotations

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
            " verified step, not a new enrolment"
        )
    if enrolled_id_hash is not None and id_hash != enrolled_id_hash:
        return "this payer is enrolled as another person (ID number); enrol a new payer id"
    return None
