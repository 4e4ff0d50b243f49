"""What issue 11 adds to the receipt API's models (``services.ledger.schemas``),
additively: the face shown and the 查验 count on a read, and the list of signing keys.
Here until ``schemas.py`` takes them."""

from __future__ import annotations

from typing import Literal

from services.ledger.schemas import PublicKeyPublic, ReceiptPublic

FaceShown = Literal["full", "masked"]


class ReceiptFacePublic(ReceiptPublic):
    """``GET /v1/receipts/{code}/{number}``. ``face`` says which face ``receipt`` is:
    ``full`` (the signed face: the owning caller, or an operator) or ``masked`` (the
    public face: names 张*, no payer, payment or refund id; the signature covers the
    full face, so it does not verify against this one). ``checked_count`` is the
    receipt's 查验次数, this read included when it was a public check."""

    face: FaceShown = "full"
    checked_count: int = 0


class SigningKeyPublic(PublicKeyPublic):
    """One entry of ``GET /v1/receipts/public-keys``: a key that signed a receipt still
    in force (or signs new ones: ``current``)."""

    current: bool
