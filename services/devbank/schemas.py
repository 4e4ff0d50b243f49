"""HTTP models of the development bank: ``…Create`` request bodies, ``…Public`` answers."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.devbank.domain import Operation, Status

MAX_FEN = 10**15  # far above any payment; keeps amounts inside SQLite's 64-bit integers

Reference = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$",
        description="the caller's id of the operation: letters, digits and . _ : -",
    ),
]
AccountRef = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
Fen = Annotated[int, Field(strict=True, gt=0, le=MAX_FEN, description="integer fen")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class DebitCreate(_Body):
    reference: Reference
    amount: Fen
    currency: Literal["CNY"]
    payer_ref: AccountRef


class RefundCreate(_Body):
    reference: Reference
    debit_reference: Reference
    amount: Fen
    currency: Literal["CNY"] = "CNY"


class TransferCreate(_Body):
    reference: Reference
    to_account: AccountRef
    amount: Fen
    currency: Literal["CNY"] = "CNY"


class OperationPublic(BaseModel):
    """The bank's answer to a debit, refund or transfer (and to reading one)."""

    reference: str
    status: Status
    reason: str | None

    @classmethod
    def of(cls, op: Operation) -> OperationPublic:
        return cls(reference=op.reference, status=op.status, reason=op.reason)


class ControlUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    decline_next: int | None = Field(None, ge=0, le=1_000_000, strict=True)
    delay_ms: int | None = Field(None, ge=0, le=600_000, strict=True)
    unavailable_for_s: float | None = Field(None, gt=0, le=3600)

    @model_validator(mode="after")
    def _something(self) -> ControlUpdate:
        if self.decline_next is None and self.delay_ms is None and self.unavailable_for_s is None:
            raise ValueError("send at least one of decline_next, delay_ms, unavailable_for_s")
        return self


class ControlPublic(BaseModel):
    decline_next: int
    delay_ms: int
    unavailable_until: str | None  # RFC 3339 UTC while connections are refused
