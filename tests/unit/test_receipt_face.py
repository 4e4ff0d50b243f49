"""The receipt face model (shared.receipt_face) against the faces the ledger issues,
and the outsider's check (docs/examples/receipt_to_openssl.py + openssl) against a
real signature."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from services.ledger.domain.chain import LedgerHead
from services.ledger.domain.posting import Posting, decide_posting
from services.ledger.domain.receipts import ReceiptPolicy, receipt_face, red_receipt_face
from services.ledger.signing import verify_face
from shared.canonical import canonical_bytes
from shared.events import BeneficiaryRef, ReceiptIssued
from shared.receipt_face import ReceiptFace
from tests.unit.test_ledger_domain import KEYS, NOW, SIGNER, payment

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "receipt_to_openssl.py"


def issued_face() -> ReceiptIssued:
    decision = decide_posting({}, LedgerHead(), payment(amount=38000), now=NOW, keys=KEYS)
    assert isinstance(decision, Posting)
    assert decision.receipt is not None
    return decision.receipt


def typed_round_trip(face: dict[str, Any]) -> dict[str, Any]:
    return ReceiptFace.model_validate(face).model_dump(mode="json", exclude_unset=True)


def test_an_issued_premium_face_is_a_receipt_face_and_round_trips_byte_for_byte() -> None:
    issued = issued_face()
    again = typed_round_trip(issued.receipt)
    assert canonical_bytes(again) == canonical_bytes(issued.receipt)
    assert verify_face(again, issued.signature, SIGNER.public_raw)


def test_sealed_and_red_faces_are_receipt_faces() -> None:
    p = payment(amount=38000)
    sealed_beneficiary = BeneficiaryRef(
        id_number_masked="",
        id_number_hash="h" * 64,
        name="",
        relation="child",
        personal="v1.pk_1.sealed",
    )
    sealed_payment = p.model_copy(update={"beneficiary": sealed_beneficiary})
    face = receipt_face(
        sealed_payment,
        code="11060126",
        number="0000000001",
        check="ABCDEF",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )
    assert canonical_bytes(typed_round_trip(face)) == canonical_bytes(face)
    red = red_receipt_face(
        issued_face().receipt,
        refund_id="re_1",
        amount=1000,
        code="11060126",
        number="0000000002",
        check="GHIJKL",
        posted_at=NOW,
        policy=ReceiptPolicy(),
    )
    typed = ReceiptFace.model_validate(red)
    assert typed.kind == "red"
    assert typed.total == -1000
    assert canonical_bytes(typed_round_trip(red)) == canonical_bytes(red)


def test_old_faces_are_not_the_current_model_but_still_decode_as_events() -> None:
    before_issue_8 = {
        "title": "医疗保障费用电子票据",
        "code": "11060126",
        "number": "0000000001",
        "payer_name": "张三",
        "payer_id": "u-1",
        "total": 100,
    }
    with pytest.raises(ValidationError):
        ReceiptFace.model_validate(before_issue_8)
    issued = issued_face()
    old = issued.model_copy(update={"receipt": before_issue_8})
    assert ReceiptIssued.model_validate(old.model_dump(mode="json")).receipt == before_issue_8


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_an_outsider_verifies_a_receipt_with_the_standard_library_and_openssl(
    tmp_path: Path,
) -> None:
    issued = issued_face()
    (tmp_path / "receipt.json").write_text(
        json.dumps(
            {
                "receipt": issued.receipt,
                "signature": issued.signature,
                "key_id": issued.key_id,
                "face": "full",
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    (tmp_path / "keys.json").write_text(
        json.dumps(
            [
                {
                    "key_id": SIGNER.key_id,
                    "public_key": SIGNER.public_key_b64,
                    "purpose": "receipts",
                }
            ]
        )
    )
    prepare = [sys.executable, "-I", str(EXAMPLE), "receipt.json", "keys.json"]
    subprocess.run(prepare, cwd=tmp_path, check=True, capture_output=True)
    verify = [
        "openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "key.der",
        "-rawin", "-in", "face.bin", "-sigfile", "sig.bin",
    ]  # fmt: skip
    done = subprocess.run(verify, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Signature Verified Successfully" in done.stdout
    # One changed byte of the face: openssl refuses it.
    face = (tmp_path / "face.bin").read_bytes()
    (tmp_path / "face.bin").write_bytes(face.replace(b"38000", b"38001"))
    done = subprocess.run(verify, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert done.returncode != 0
