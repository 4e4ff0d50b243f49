"""The receipt read's response model: ``ReceiptPublic`` (``services.ledger.schemas``)
with what issue 11 adds, additively. Here until ``schemas.py`` takes the two fields."""

from __future__ import annotations

from typing import Literal

from services.ledger.schemas import ReceiptPublic

FaceShown = Literal["full", "masked"]


class ReceiptFacePublic(ReceiptPublic):
    """``GET /v1/receipts/{code}/{number}``. ``face`` says which face ``receipt`` is:
    ``full`` (the signed face: the owning caller, or an operator) or ``masked`` (the
    public face: names 张*, no payer, payment or refund id; the signature covers the
    full face, so it does not verify against this one). ``checked_count`` is the
    receipt's 查验次数, this read included when it was a public check."""

    face: FaceShown = "full"
    checked_count: int = 0
