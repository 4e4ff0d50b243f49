"""The receipt face as the ledger signs it today: a typed model and its JSON Schema.

``ReceiptIssued.receipt`` stays ``dict`` on the wire: faces are never re-created, and
the journal holds older shapes (before issue 8: ``payer_name``/``beneficiary``) that
readers still accept (``services.ledger.domain.receipts``). Every face the ledger
issues now validates against ``ReceiptFace`` (tests/unit/test_receipt_face.py); the
schema is published in docs/asyncapi.json and docs/receipt-face.schema.json.

What is signed: the face exactly as carried (all its fields, ``personal`` included,
nulls kept), in RFC 8785 JSON Canonicalization Scheme form (``shared.canonical``:
keys sorted, no whitespace, UTF-8), Ed25519 by the receipts key named by
``key_id``; the signature is standard base64. docs/auditors.md shows the check with
Python's standard library and ``openssl``.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import Currency, Fen, PaymentMethod, Relation


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FacePayer(_Strict):
    """交款人: the app account that paid."""

    id: str
    id_masked: str
    name: str | None = Field(description="the payer's name when they insure themself")


class FaceInsured(_Strict):
    """参保人: the insured person. Without ``name`` and ``id_number_masked`` when those
    are sealed in the face's ``personal``."""

    relation: Relation
    name: str | None = None
    id_number_masked: str | None = None


class FaceItem(_Strict):
    name: str
    amount: Fen = Field(description="fen; negative on a red receipt")


class FaceReference(_Strict):
    code: str
    number: str


class ReceiptFace(_Strict):
    """The signed face of an e-receipt (医疗保障费用电子票据), as issued since issue 8:
    a premium receipt, or a red receipt (红冲, ``kind: "red"``) reversing one."""

    title: str
    kind: Literal["red"] | None = Field(None, description="present on a red receipt only")
    code: str = Field(pattern=r"^[0-9]{8}$", description="票据代码")
    number: str = Field(pattern=r"^[0-9]{10}$", description="票据号码")
    check_code: str = Field(description="校验码")
    issued_at: str = Field(description="RFC 3339 UTC, e.g. 2026-11-26T08:00:00.123456Z")
    issue_date: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", description="Asia/Shanghai")
    payer: FacePayer
    insured: FaceInsured
    items: tuple[FaceItem, ...]
    total: Fen
    total_in_words: str = Field(description="大写金额")
    currency: Currency
    payee: str = Field(description="收款单位")
    payee_id: str
    reviewer: str = Field(description="复核人")
    payment_id: str
    refund_id: str | None = Field(None, description="red receipt: the refund it books")
    method: PaymentMethod
    relates_to: FaceReference | None = Field(None, description="red receipt: the original")
    qr_payload: str
    personal: str | None = Field(
        None, description="the insured's name and masked ID number sealed per person"
    )


def receipt_face_schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of ``ReceiptFace``."""
    schema = ReceiptFace.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render_schema() -> str:
    return json.dumps(receipt_face_schema(), indent=2, ensure_ascii=False) + "\n"
