"""Erasure by crypto-shredding (issue 11): names and masked ID numbers sealed under a
per-person key; once the key is gone every reader shows 已删除 and the signature over
the sealed face still verifies."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from services.ledger.audit.rules import Auditor
from services.ledger.domain.receipts import (
    ReceiptPolicy,
    is_erased,
    personal_key_id,
    public_face,
    receipt_face,
    red_receipt_face,
    revealed_face,
    sign_face,
)
from services.ledger.receipts.html import receipt_page
from services.ledger.receipts.view import receipt_view
from services.ledger.signing import ReceiptSigner, verify_face
from services.payment.schemas import ErasureCreate
from shared.crypto import SealError
from shared.events import (
    BeneficiaryRef,
    Event,
    PaymentDetails,
    PersonalDataErased,
    Purpose,
    decode_payload,
    new_event,
)
from shared.personal import (
    ERASED,
    key_id_of,
    new_person_key,
    open_personal,
    personal_aad,
    reveal,
    seal_personal,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SIGNER = ReceiptSigner(b"e" * 32)
KID, KEY = new_person_key()
PAYMENT_ID = "pay_00112233445566778899"
FIELDS = {"name": "张三", "id_number_masked": "110105********002X"}


def sealed_details(relation: str = "self") -> PaymentDetails:
    blob = seal_personal(KID, KEY, FIELDS, aad=personal_aad(PAYMENT_ID))
    return PaymentDetails(
        payment_id=PAYMENT_ID,
        payer_id="u-100042",
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked=FIELDS["id_number_masked"],
            id_number_hash="h" * 64,
            name=FIELDS["name"],
            relation=relation,  # type: ignore[arg-type]
            personal=blob,
        ),
        purpose=Purpose(
            type="premium", region="110000", scheme="urban_rural_resident", period="2027"
        ),
        amount=38_000,
        method="wallet",
        payee_id="bureau:110000",
        payee_name="北京市医疗保障局",
        requested_at=NOW,
    )


def sealed_face(relation: str = "self") -> dict[str, Any]:
    return receipt_face(
        sealed_details(relation).for_log(),  # as the ledger receives it
        code="11060126",
        number="0000000009",
        check="ABCDEF",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )


# ------------------------------------------------------------------ sealing


def test_a_blob_opens_with_its_key_and_binding_only() -> None:
    blob = seal_personal(KID, KEY, FIELDS, aad=personal_aad(PAYMENT_ID))
    assert blob.startswith(f"p1.{KID}.") and key_id_of(blob) == KID
    assert "张三" not in blob
    assert open_personal(blob, KEY, aad=personal_aad(PAYMENT_ID)) == FIELDS
    with pytest.raises(SealError):
        open_personal(blob, KEY, aad=personal_aad("pay_other"))  # moved to another payment
    with pytest.raises(SealError):
        open_personal(blob, new_person_key()[1], aad=personal_aad(PAYMENT_ID))


def test_reveal_shows_erased_once_the_key_is_gone() -> None:
    blob = seal_personal(KID, KEY, FIELDS, aad=personal_aad(PAYMENT_ID))
    names = ("name", "id_number_masked")
    assert reveal(blob, {KID: KEY}, aad=personal_aad(PAYMENT_ID), names=names) == FIELDS
    assert reveal(blob, {}, aad=personal_aad(PAYMENT_ID), names=names) == {
        "name": ERASED,
        "id_number_masked": ERASED,
    }


def test_erasure_names_exactly_one_person() -> None:
    assert ErasureCreate(payer_id="u-1").payer_id == "u-1"
    with pytest.raises(ValueError, match="exactly one"):
        ErasureCreate()
    with pytest.raises(ValueError, match="exactly one"):
        ErasureCreate(payer_id="u-1", id_number="11010519491231002X")


# ------------------------------------------------------------------ events


def test_the_log_carries_the_blob_and_no_clear_name() -> None:
    details = sealed_details().for_log()
    assert details.beneficiary.name == "" and details.beneficiary.id_number_masked == ""
    assert details.beneficiary.personal is not None
    assert "张三" not in details.model_dump_json()


def test_old_payment_events_decode_with_names_in_the_clear() -> None:
    old = sealed_details().model_dump(mode="json")
    old["beneficiary"].pop("personal")
    for event_type, version, extra in (
        ("PaymentRequested", 1, {}),
        ("PaymentAuthorized", 1, {"stepped_up": False}),
        ("PaymentAuthorized", 2, {"stepped_up": False, "bank_debit": None}),
    ):
        envelope = new_event(
            _Raw(event_type, version, {"payment": old, **extra}),  # type: ignore[arg-type]
            producer="payment",
            key="u-100042",
            correlation_id=PAYMENT_ID,
        )
        payload = decode_payload(envelope)
        details = payload.payment  # type: ignore[attr-defined]
        assert details.beneficiary.name == "张三" and details.beneficiary.personal is None


class _Raw:
    """A stored payload of an older version, as it sits on the log."""

    def __init__(self, event_type: str, version: int, data: dict[str, Any]) -> None:
        self.event_type, self.schema_version, self._data = event_type, version, data

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        return self._data


# ------------------------------------------------------------------ receipt faces


def test_a_sealed_face_signs_the_blob_and_names_nobody() -> None:
    face = sealed_face()
    assert personal_key_id(face) == KID
    assert "张三" not in str(face) and "002X" not in str(face)
    signature = sign_face(face, SIGNER)
    assert verify_face(face, signature, SIGNER.public_raw)


@pytest.mark.parametrize("relation", ["self", "child"])
def test_revealed_with_the_key_shows_the_names(relation: str) -> None:
    shown = revealed_face(sealed_face(relation), {KID: KEY})
    assert shown["insured"] == {**FIELDS, "relation": relation}
    assert shown["payer"]["name"] == ("张三" if relation == "self" else None)
    assert "personal" not in shown
    assert public_face(shown)["insured"]["name"] == "张*"


def test_after_erasure_every_reader_shows_erased_and_the_signature_verifies() -> None:
    face = sealed_face()
    signature = sign_face(face, SIGNER)
    assert is_erased(face, {}) and not is_erased(face, {KID: KEY})
    shown = revealed_face(face, {})
    assert shown["insured"]["name"] == ERASED
    assert shown["insured"]["id_number_masked"] == ERASED
    assert public_face(shown)["insured"]["name"] == ERASED  # not masked to 已**
    view = receipt_view(shown, signature=signature, key_id=SIGNER.key_id, journal_seq=1)
    assert ERASED in receipt_page(view) and "张" not in receipt_page(view)
    assert verify_face(face, signature, SIGNER.public_raw)  # the stored face


def test_a_red_receipt_carries_its_originals_blob() -> None:
    original = sealed_face()
    red = red_receipt_face(
        original,
        refund_id="re_1",
        amount=1000,
        code="11060126",
        number="0000000010",
        check="GHIJKL",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )
    assert red["personal"] == original["personal"]
    assert revealed_face(red, {KID: KEY})["insured"]["name"] == "张三"
    assert revealed_face(red, {})["insured"]["name"] == ERASED


def test_clear_faces_read_as_they_are() -> None:
    details = sealed_details().model_copy(
        update={"beneficiary": sealed_details().beneficiary.model_copy(update={"personal": None})}
    )
    face = receipt_face(
        details, code="11060126", number="1", check="X", posted_at=NOW, policy=ReceiptPolicy()
    )
    assert revealed_face(face, {}) == face and not is_erased(face, {})


# ------------------------------------------------------------------ audit


def test_the_audit_counts_erasures_without_a_discrepancy() -> None:
    auditor = Auditor(public_key=SIGNER.public_raw)
    auditor._sealed_receipts[KID] = 2
    auditor._sealed_receipts["pk_other"] = 1
    erased = PersonalDataErased(
        erasure_id="er_1", key_ids=(KID,), payer_ids=("u-100042",), erased_at=NOW
    )
    envelope = new_event(erased, producer="payment", key="u-100042", correlation_id="er_1")
    auditor.payment(Event(envelope, erased), where=None)  # type: ignore[arg-type]
    assert (auditor.sealed_receipts, auditor.erased_receipts) == (3, 2)
    assert auditor.counts.erasures == 1 and auditor.findings.total == 0
