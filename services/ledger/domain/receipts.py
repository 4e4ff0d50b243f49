"""E-receipt rules (DOMAIN.md "Electronic receipts"): code, number, check code, faces.

Pure. The face is what gets signed (Ed25519 over its canonical JSON, see
``services.ledger.signing``); everything on it comes from the event and the decision
recorded in the journal. Faces are never re-created: the journal records them, so a
reader accepts every shape ever signed:

- before issue 8 a face named the insured person as ``payer_name`` with ``payer_id``,
  ``payer_id_masked`` and ``beneficiary``;
- since, the payer (交款人: the app account paying) and the insured person (参保人)
  are apart: ``payer`` ``{"id", "id_masked", "name"}`` (``name`` only when the payer
  insures themself) and ``insured`` ``{"name", "id_number_masked", "relation"}``;
- a red receipt (红冲) has ``kind: "red"``, negative ``items``/``total``, its
  ``refund_id`` and ``relates_to: {"code", "number"}`` naming the original;
- since issue 11 (erasure), a payment whose beneficiary's fields come sealed per
  person gets a face without the names and masked ID number: ``personal`` holds them,
  the payment's blob as it came (``shared.personal``, AAD ``personal_aad(payment_id)``),
  and the signature covers the blob. ``revealed_face`` puts them back for reading, or
  ``已删除`` once the person's key is erased; a red receipt carries its original's blob.

``public_face`` is what a reader without the owner's key sees of any of these shapes
(DESIGN.md "Contract additions: trust"): names masked (张*), no payer id, no payment or
refund id, ID numbers masked as they are. It is not signed: the signature covers the
full face only.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.canonical import canonical_bytes
from shared.crypto import hmac_sha256
from shared.errors import DomainError
from shared.events import PaymentDetails
from shared.money import SHANGHAI, chinese_capitals, shanghai_day
from shared.personal import ERASED, is_sealed, key_id_of, personal_aad, reveal
from shared.regions import bureau_name

DEFAULT_RECEIPT_TITLE = "医疗保障费用电子票据"
DEFAULT_REVIEWER = "系统复核"
SCHEME_ITEMS: Mapping[str, str] = {
    "urban_rural_resident": "城乡居民基本医疗保险费",
    "flexible_employment": "灵活就业人员基本医疗保险费",
    "commercial_health": "商业健康保险费",
}
GENERIC_ITEM = "医疗保障费"
RED = "red"  # ``kind`` of a red (reversal) receipt face


class ReceiptNumbersExhausted(DomainError):
    """A code ran out of 10-digit numbers (a configuration problem, not a payer's)."""

    code = "receipt_numbers_exhausted"


class Signer(Protocol):
    """Signs receipt faces (``services.ledger.signing.ReceiptSigner`` is the real one)."""

    @property
    def key_id(self) -> str: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True)
class ReceiptPolicy:
    """Settings that shape the receipt face (票据代码 parts, 票据名称, 复核人)."""

    category: str = "06"
    type_code: str = "01"
    title: str = DEFAULT_RECEIPT_TITLE
    reviewer: str = DEFAULT_REVIEWER
    bureau_names: Mapping[str, str] = field(default_factory=dict)  # region → 收款单位

    def payee_of(self, payment: PaymentDetails) -> str:
        """The payment's payee name; the configured bureau name when it carries none."""
        return payment.payee_name or bureau_name(payment.purpose.region, self.bureau_names)


def receipt_code(region: str, posted_at: datetime, policy: ReceiptPolicy) -> str:
    """票据代码: region (2) + category (2) + type (2) + year (2, Asia/Shanghai)."""
    year = posted_at.astimezone(SHANGHAI).year % 100
    return f"{region[:2]}{policy.category}{policy.type_code}{year:02d}"


def receipt_number(n: int) -> str:
    """票据号码: 10 digits."""
    if not 1 <= n < 10**10:
        raise ReceiptNumbersExhausted(
            f"receipt number {n} is outside 10 digits; configure a new receipt type"
        )
    return f"{n:010d}"


def check_code(key: bytes, code: str, number: str, payment_id: str, amount: int) -> str:
    """校验码: 6 chars of base32 HMAC over code|number|payment_id|amount (a red receipt
    passes its refund id as ``payment_id``)."""
    message = "|".join((code, number, payment_id, str(amount))).encode()
    return base64.b32encode(hmac_sha256(key, message)).decode()[:6]


def mask_account_id(payer_id: str) -> str:
    if len(payer_id) <= 4:
        return "*" * len(payer_id)
    return payer_id[:2] + "*" * (len(payer_id) - 4) + payer_id[-2:]


def mask_name(name: str) -> str:
    """张三 -> 张*, 欧阳娜娜 -> 欧***; an erased name stays 已删除."""
    if name == ERASED:
        return name
    return name[:1] + "*" * max(len(name) - 1, 1) if name else ""


def item_name(payment: PaymentDetails) -> str:
    scheme = payment.purpose.scheme
    name = SCHEME_ITEMS.get(scheme, GENERIC_ITEM) if scheme else GENERIC_ITEM
    return f"{name} {payment.purpose.period}" if payment.purpose.period else name


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def receipt_face(
    payment: PaymentDetails,
    *,
    code: str,
    number: str,
    check: str,
    posted_at: datetime,
    policy: ReceiptPolicy,
) -> dict[str, Any]:
    """The signed face of a premium receipt (DOMAIN.md "Electronic receipts")."""
    b = payment.beneficiary
    sealed = b.personal is not None
    face: dict[str, Any] = {
        "title": policy.title,
        "code": code,
        "number": number,
        "check_code": check,
        "issued_at": iso_utc(posted_at),
        "issue_date": shanghai_day(posted_at).isoformat(),
        "payer": {
            "id": payment.payer_id,
            "id_masked": mask_account_id(payment.payer_id),
            "name": b.name if b.relation == "self" else None,
        },
        "insured": {
            "name": b.name,
            "id_number_masked": b.id_number_masked,
            "relation": b.relation,
        },
        "items": [{"name": item_name(payment), "amount": payment.amount}],
        "total": payment.amount,
        "total_in_words": chinese_capitals(payment.amount),
        "currency": payment.currency,
        "payee": policy.payee_of(payment),
        "payee_id": payment.payee_id,
        "reviewer": policy.reviewer,
        "payment_id": payment.payment_id,
        "method": payment.method,
        "qr_payload": f"yibao-receipt:{code}:{number}:{check}",
    }
    if sealed:
        face["payer"]["name"] = None
        face["insured"] = {"relation": b.relation}
        face["personal"] = b.personal
    return face


_PERSONAL_FIELDS = ("name", "id_number_masked")


def personal_key_id(face: Mapping[str, Any]) -> str | None:
    """The person key a face's sealed fields are under; None for a face in the clear."""
    blob = face.get("personal")
    return key_id_of(blob) if is_sealed(blob) else None


def revealed_face(face: Mapping[str, Any], keys: Mapping[str, bytes]) -> dict[str, Any]:
    """The face for reading: its sealed names and masked ID number opened with the
    person's key from ``keys``, each ``已删除`` (ERASED) once the key is erased; a face
    in the clear as it is. Not what was signed: verify against the stored face."""
    blob = face.get("personal")
    if not is_sealed(blob):
        return dict(face)
    fields = reveal(
        blob, keys, aad=personal_aad(str(face.get("payment_id", ""))), names=_PERSONAL_FIELDS
    )
    shown = {k: v for k, v in face.items() if k != "personal"}
    insured = dict(face.get("insured") or {})
    shown["insured"] = {
        "name": fields["name"],
        "id_number_masked": fields["id_number_masked"],
        "relation": insured.get("relation", ""),
    }
    payer = dict(face.get("payer") or {})
    payer["name"] = fields["name"] if insured.get("relation") == "self" else None
    shown["payer"] = payer
    return shown


def is_erased(face: Mapping[str, Any], keys: Mapping[str, bytes]) -> bool:
    """The face's personal fields are sealed under a key that is gone."""
    kid = personal_key_id(face)
    return kid is not None and kid not in keys


@dataclass(frozen=True)
class FaceParties:
    """Who a face names, whatever its shape (see the module docstring)."""

    payer_name: str | None  # the payer's own name, when the face knows it
    payer_id: str
    payer_id_masked: str
    insured_name: str
    insured_id_number_masked: str
    relation: str

    @property
    def payer_shown(self) -> str:
        """The payer as shown in public: the masked name, else the masked account."""
        return mask_name(self.payer_name) if self.payer_name else self.payer_id_masked


def face_parties(face: Mapping[str, Any]) -> FaceParties:
    insured = face.get("insured")
    if isinstance(insured, Mapping):
        payer = face.get("payer") or {}
        return FaceParties(
            payer_name=payer.get("name") or None,
            payer_id=str(payer.get("id", "")),
            payer_id_masked=str(payer.get("id_masked", "")),
            insured_name=str(insured.get("name", "")),
            insured_id_number_masked=str(insured.get("id_number_masked", "")),
            relation=str(insured.get("relation", "")),
        )
    beneficiary = face.get("beneficiary") or {}
    name = str(face.get("payer_name", ""))  # before issue 8: the insured's name
    return FaceParties(
        payer_name=name or None,
        payer_id=str(face.get("payer_id", "")),
        payer_id_masked=str(face.get("payer_id_masked", "")),
        insured_name=str(beneficiary.get("name", name)),
        insured_id_number_masked=str(beneficiary.get("id_number_masked", "")),
        relation=str(beneficiary.get("relation", "")),
    )


def is_red(face: Mapping[str, Any]) -> bool:
    return face.get("kind") == RED


def relates_to(face: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, number) of the original a red receipt reverses; None for any other."""
    ref = face.get("relates_to")
    if not is_red(face) or not isinstance(ref, Mapping):
        return None
    return str(ref.get("code", "")), str(ref.get("number", ""))


def red_receipt_face(
    original: Mapping[str, Any],
    *,
    refund_id: str,
    amount: int,
    code: str,
    number: str,
    check: str,
    posted_at: datetime,
    policy: ReceiptPolicy,
) -> dict[str, Any]:
    """The signed face of a red receipt (红冲) reversing ``amount`` of ``original``."""
    parties = face_parties(original)
    items = original.get("items") or [{"name": GENERIC_ITEM}]
    face: dict[str, Any] = {
        "title": policy.title,
        "kind": RED,
        "code": code,
        "number": number,
        "check_code": check,
        "issued_at": iso_utc(posted_at),
        "issue_date": shanghai_day(posted_at).isoformat(),
        "payer": {
            "id": parties.payer_id,
            "id_masked": parties.payer_id_masked,
            "name": parties.payer_name,
        },
        "insured": {
            "name": parties.insured_name,
            "id_number_masked": parties.insured_id_number_masked,
            "relation": parties.relation,
        },
        "items": [{"name": str(items[0]["name"]), "amount": -amount}],
        "total": -amount,
        "total_in_words": chinese_capitals(-amount),
        "currency": original.get("currency", "CNY"),
        "payee": original.get("payee", ""),
        "payee_id": original.get("payee_id", ""),
        "reviewer": policy.reviewer,
        "payment_id": original.get("payment_id", ""),
        "refund_id": refund_id,
        "method": original.get("method", ""),
        "relates_to": {"code": original["code"], "number": original["number"]},
        "qr_payload": f"yibao-receipt:{code}:{number}:{check}",
    }
    if is_sealed(original.get("personal")):  # the original's blob: same payment, same AAD
        face["insured"] = {"relation": parties.relation}
        face["personal"] = original["personal"]
    return face


# What a public face keeps (everything else is left out, so a field a future face adds
# is never shown in public by accident); names are masked on the way.
_PUBLIC_FIELDS = (
    "title",
    "kind",
    "code",
    "number",
    "check_code",
    "issued_at",
    "issue_date",
    "items",
    "total",
    "total_in_words",
    "currency",
    "payee",
    "payee_id",
    "reviewer",
    "method",
    "relates_to",
    "qr_payload",
    "payer_id_masked",  # before issue 8
)
_PUBLIC_PERSON = ("id_masked", "id_number_masked", "relation")  # kept; "name" masked


def _public_person(person: Mapping[str, Any]) -> dict[str, Any]:
    shown = {k: person[k] for k in _PUBLIC_PERSON if k in person}
    if "name" in person:
        shown["name"] = mask_name(str(person["name"])) if person["name"] else person["name"]
    return shown


def public_face(face: Mapping[str, Any]) -> dict[str, Any]:
    """The face as shown to the public: names masked as 张*, no payer id, no payment or
    refund id, ID numbers as masked on the face. A signature does not verify against
    it (it covers the full face); without the payment id (64 random bits) the
    signature cannot confirm a guessed name either."""
    shown = {k: face[k] for k in _PUBLIC_FIELDS if k in face}
    for person in ("payer", "insured", "beneficiary"):
        if isinstance(face.get(person), Mapping):
            shown[person] = _public_person(face[person])
    if face.get("payer_name"):  # before issue 8: the insured person's name
        shown["payer_name"] = mask_name(str(face["payer_name"]))
    return shown


def sign_face(face: Mapping[str, Any], signer: Signer) -> str:
    return base64.b64encode(signer.sign(canonical_bytes(dict(face)))).decode()
