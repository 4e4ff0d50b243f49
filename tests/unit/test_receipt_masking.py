"""The public receipt face (issue 11): names masked as 张*, no payer id, no payment or
refund id, ID numbers as masked on the face, for every face shape the journal holds."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from services.ledger.domain.receipts import (
    ReceiptPolicy,
    public_face,
    receipt_face,
    red_receipt_face,
)
from services.ledger.receipts.view import receipt_view
from services.ledger.signing import ReceiptSigner, verify_face
from shared.canonical import canonical_bytes
from shared.events import BeneficiaryRef, PaymentDetails, Purpose

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
SIGNER = ReceiptSigner(b"m" * 32)

# A face signed before issue 8 (as in tests/fixtures/journal-v1.jsonl.gz).
V1_FACE: dict[str, Any] = {
    "title": "医疗保障费用电子票据",
    "code": "31060126",
    "number": "0000000001",
    "check_code": "M4KL73",
    "issued_at": "2026-01-05T01:00:04.250000Z",
    "issue_date": "2026-01-05",
    "payer_name": "张三",
    "payer_id_masked": "u-****08",
    "payer_id": "u-000008",
    "beneficiary": {
        "name": "张三",
        "id_number_masked": "110105********002X",
        "relation": "self",
    },
    "items": [{"name": "城乡居民基本医疗保险费 2027", "amount": 79500}],
    "total": 79500,
    "total_in_words": "柒佰玖拾伍元整",
    "currency": "CNY",
    "payee": "上海市医疗保障局",
    "payee_id": "bureau:310000",
    "reviewer": "系统复核",
    "payment_id": "pay_625f92c66675533b8105",
    "method": "wallet",
    "qr_payload": "yibao-receipt:31060126:0000000001:M4KL73",
}


def payment(name: str = "张三", relation: str = "self", payer: str = "u-100042") -> PaymentDetails:
    return PaymentDetails(
        payment_id="pay_0123456789abcdef",
        payer_id=payer,
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="h" * 64,
            name=name,
            relation=relation,
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


def new_face(name: str = "张三", relation: str = "self", payer: str = "u-100042") -> dict[str, Any]:
    return receipt_face(
        payment(name, relation, payer),
        code="11060126",
        number="0000000007",
        check="ABCDEF",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )


def red_face() -> dict[str, Any]:
    return red_receipt_face(
        new_face(),
        refund_id="rfd_0123456789abcdef",
        amount=10_000,
        code="11060126",
        number="0000000008",
        check="GHIJKL",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )


def text_of(face: dict[str, Any]) -> str:
    return json.dumps(face, ensure_ascii=False)


def test_new_face_masked() -> None:
    shown = public_face(new_face())
    assert shown["payer"] == {"id_masked": "u-****42", "name": "张*"}
    assert shown["insured"] == {
        "name": "张*",
        "id_number_masked": "110105********002X",
        "relation": "self",
    }
    for secret in ("张三", "u-100042", "pay_0123456789abcdef"):
        assert secret not in text_of(shown), secret
    for kept in ("code", "number", "check_code", "issue_date", "items", "total", "payee"):
        assert shown[kept] == new_face()[kept]


def test_face_of_someone_else_insured() -> None:
    shown = public_face(new_face(name="欧阳娜娜", relation="child"))
    assert shown["payer"] == {"id_masked": "u-****42", "name": None}
    assert shown["insured"]["name"] == "欧***"
    assert "欧阳娜娜" not in text_of(shown)


def test_face_before_issue_8_masked() -> None:
    shown = public_face(V1_FACE)
    assert shown["payer_name"] == "张*"
    assert shown["beneficiary"]["name"] == "张*"
    assert shown["payer_id_masked"] == "u-****08"
    assert "payer_id" not in shown
    assert "payment_id" not in shown
    for secret in ("张三", "u-000008", "pay_625f92c66675533b8105"):
        assert secret not in text_of(shown), secret


def test_red_face_masked() -> None:
    shown = public_face(red_face())
    assert shown["kind"] == "red"
    assert shown["total"] == -10_000
    assert shown["relates_to"] == {"code": "11060126", "number": "0000000007"}
    for secret in ("张三", "u-100042", "pay_0123456789abcdef", "rfd_0123456789abcdef"):
        assert secret not in text_of(shown), secret


def test_fields_a_face_never_had_stay_out() -> None:
    future = {**new_face(), "payer_phone": "13800138000", "note": "anything new"}
    shown = public_face(future)
    assert "payer_phone" not in shown
    assert "note" not in shown


def test_masked_face_does_not_verify_and_full_face_still_does() -> None:
    face = new_face()
    signature = SIGNER.sign(canonical_bytes(face))
    b64 = base64.b64encode(signature).decode()
    assert verify_face(face, b64, SIGNER.public_raw)
    assert not verify_face(public_face(face), b64, SIGNER.public_raw)


def test_masking_is_idempotent_and_the_page_reads_it_the_same() -> None:
    for face in (new_face(), V1_FACE, red_face(), new_face("李", "spouse")):
        shown = public_face(face)
        assert public_face(shown) == shown
        full = receipt_view(face, signature="s", key_id="k", journal_seq=1)
        masked = receipt_view(shown, signature="s", key_id="k", journal_seq=1)
        assert (masked.payer, masked.insured, masked.payer_id_number) == (
            full.payer,
            full.insured,
            full.payer_id_number,
        )


@given(
    name=st.text(alphabet=st.characters(min_codepoint=0x4E00, max_codepoint=0x9FA5), min_size=2),
    payer=st.from_regex(r"u-[0-9]{6,12}", fullmatch=True),
    relation=st.sampled_from(["self", "spouse", "child", "parent"]),
)
def test_no_full_name_or_payer_id_in_public(name: str, payer: str, relation: str) -> None:
    # A name that is part of the face's fixed wording (电子, 票据) proves nothing.
    assume(name not in text_of(public_face(new_face("〇", relation, "u-0"))))
    shown = public_face(new_face(name, relation, payer))
    text = text_of(shown)
    assert name not in text
    assert payer not in text
    assert shown["insured"]["name"] == name[0] + "*" * (len(name) - 1)
