"""The ledger's HTTP API models: ``…Create`` request bodies, ``…Public`` responses
(DESIGN.md "Contract: ledger API" and the README's additions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ASCII digits only (``shared.digits``): ``\d`` would take full-width and other scripts' digits.
CODE_RE = r"^[0-9]{8}$"
NUMBER_RE = r"^[0-9]{10}$"
CHECK_CODE_RE = r"^[A-Za-z2-7]{6}$"


class AccountPublic(BaseModel):
    account_id: str
    balance: int
    currency: str


class StatementLinePublic(BaseModel):
    seq: int
    payment_id: str
    amount: int
    balance_after: int
    posted_at: datetime


class StatementPublic(BaseModel):
    account_id: str
    currency: str
    lines: list[StatementLinePublic]
    next_after_seq: int | None  # pass as ``after_seq`` for the next page; None at the end


class ReceiptKeyPublic(BaseModel):
    """A receipt's identity: 票据代码 and 票据号码."""

    code: str
    number: str


class ReversalPublic(BaseModel):
    """A red receipt (红冲) reversing part or all of an original."""

    code: str
    number: str
    amount: int  # positive: what it reverses
    journal_seq: int
    refund_id: str | None


FaceShown = Literal["full", "masked"]


class ReceiptPublic(BaseModel):
    """``GET /v1/receipts/{code}/{number}``: the face and, outside it, the reversals
    (of an original) or the original (of a red receipt).

    ``face`` says which face ``receipt`` is: ``full`` (the signed face: the owning
    caller, or an operator) or ``masked`` (the public face: names 张*, no payer, payment
    or refund id; the signature covers the full face, so it does not verify against
    this one). ``checked_count`` is the receipt's 查验次数, this read included when it
    was a public check."""

    code: str
    number: str
    check_code: str
    journal_seq: int
    receipt: dict[str, Any]  # the signed face
    # A full read of a face whose names are sealed per person (issue 11): them opened,
    # each "已删除" once erased; the signature covers ``receipt`` (the sealed blob).
    personal: dict[str, str] | None = None
    signature: str
    key_id: str
    algorithm: str
    kind: Literal["original", "red"] = "original"
    reversed_amount: int | None = None  # an original: the sum of its red receipts
    reversals: list[ReversalPublic] | None = None  # an original: its red receipts
    relates_to: ReceiptKeyPublic | None = None  # a red receipt: the original
    face: FaceShown = "full"
    checked_count: int = 0


class VerificationCreate(BaseModel):
    """``POST /v1/receipts/verify``: what the person reads off the receipt."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(pattern=CODE_RE, description="票据代码, 8 digits")
    number: str = Field(pattern=NUMBER_RE, description="票据号码, 10 digits")
    check_code: str = Field(pattern=CHECK_CODE_RE, description="校验码, 6 characters")


class VerifiedReceiptPublic(BaseModel):
    code: str
    number: str
    issue_date: str
    payer_name: str  # masked
    total: int  # negative on a red receipt
    currency: str
    payee: str


class VerificationPublic(BaseModel):
    """The 查验 answer. ``reversed_amount`` (an original, 0 when none) and
    ``relates_to`` (a red receipt) appear only on a valid answer: a failed check
    answers exactly like an unknown receipt."""

    valid: bool
    checked_count: int
    receipt: VerifiedReceiptPublic | None
    reversed_amount: int | None = None
    relates_to: ReceiptKeyPublic | None = None


class PublicKeyPublic(BaseModel):
    key_id: str
    algorithm: str
    public_key: str
    purpose: str | None = None  # receipts, journal, settlement, manifests, certificates, all


class SigningKeyPublic(PublicKeyPublic):
    """One entry of ``GET /v1/receipts/public-keys``: a key that signed something still
    in force (or signs new ones: ``current``), with what it signs (``purpose``; ``all``:
    the undivided key of before issue 11, valid for every kind)."""

    current: bool


# ---------------------------------------------------------------------------
# Settlement (DESIGN.md "Contract additions: settlement")
# ---------------------------------------------------------------------------


class CheckpointPublic(BaseModel):
    """The journal's head, signed: Ed25519 over the canonical JSON of
    ``{"seq", "hash", "at"}`` by the key ``key_id`` (GET /v1/journal/public-key)."""

    seq: int
    hash: str
    at: str
    key_id: str
    signature: str


class RegionDayPublic(BaseModel):
    region: str
    count: int  # payment and refund lines
    paid: int
    refunded: int
    net: int  # paid - refunded + carried_in
    settled: bool  # the transfer arrived, or nothing was to be transferred
    carried_in: int  # a deficit (≤ 0) carried from the region's earlier close
    transfer_amount: int
    transfer_reference: str | None
    transfer_status: Literal["none", "pending", "arrived"] | None  # None while open
    transfer_attempts: int = 0
    transfer_last_error: str | None = None


class DayPublic(BaseModel):
    """``GET /v1/settlement/days/{day}`` (and the answer to closing it)."""

    day: str
    status: Literal["open", "closed", "settled"]
    regions: list[RegionDayPublic]
    checkpoint: CheckpointPublic | None  # the close's signed head; None while open
    closed_at: datetime | None = None
    forced: bool | None = None
    bank: str | None = None


class DiscrepancyPublic(BaseModel):
    kind: Literal["missing_in_bank", "missing_in_ledger", "amount_mismatch", "duplicate"]
    reference: str
    payment_id: str | None
    journal_seq: int | None
    ledger_amount: int | None
    bank_amount: int | None
    bank_kind: str  # debit | refund | transfer


class ReconciliationPublic(BaseModel):
    day: str
    matched: int
    discrepancies: list[DiscrepancyPublic]
    reversed: int  # statement lines of debits the bank itself reversed in full
    statement_sha256: str
    journal_seq: int


# ---------------------------------------------------------------------------
# The resident's side (issue 12): records, overview, certificate
# ---------------------------------------------------------------------------


class InsuredPublic(BaseModel):
    """The insured person (参保人) of a premium, as its receipt names them: masked."""

    name: str  # 张*
    id_number_masked: str
    relation: str


class RecordPublic(BaseModel):
    """One line of ``GET /v1/payers/{payer_id}/records``: the basic record."""

    payment_id: str
    date: str  # Asia/Shanghai day paid, YYYY-MM-DD
    posted_at: datetime
    kind: Literal["premium", "wallet_topup"]
    item: str  # 项目, as on the receipt, e.g. 城乡居民基本医疗保险费 2027
    scheme: str | None
    region: str | None
    period: str | None
    payee_id: str
    payee: str  # 收款单位
    amount: int
    currency: str
    status: Literal["paid", "partially_refunded", "refunded"]
    refunded_amount: int
    receipt: ReceiptKeyPublic | None
    payer_id: str  # who paid (role=insured: possibly a relative's payer)
    insured: InsuredPublic | None


class RecordsPublic(BaseModel):
    payer_id: str
    role: Literal["payer", "insured"]
    records: list[RecordPublic]
    has_more: bool
    next_starting_after: str | None  # pass as ``starting_after`` for the next page


class RecordLinePublic(BaseModel):
    account_id: str
    amount: int  # signed fen: negative leaves the account


class RecordReceiptPublic(BaseModel):
    code: str
    number: str
    check_code: str
    kind: Literal["original", "red"]
    amount: int  # negative on a red receipt
    journal_seq: int
    issued_at: datetime


class RecordRefundPublic(BaseModel):
    refund_id: str
    amount: int
    posted_at: datetime
    journal_seq: int
    receipt: ReceiptKeyPublic | None  # the red receipt (红冲)
    bank_reference: str | None


class RecordDetailPublic(RecordPublic):
    """``GET /v1/payers/{payer_id}/records/{payment_id}`` (消费明细; a records session)."""

    method: str
    journal_seq: int
    lines: list[RecordLinePublic]
    receipts: list[RecordReceiptPublic]
    refunds: list[RecordRefundPublic]
    bank_reference: str | None


class CoveragePublic(BaseModel):
    """A scheme in a region in one year: the periods paid and whether today is covered."""

    scheme: str
    region: str
    bureau: str
    year: int
    status: Literal["insured", "not_insured"]
    periods: list[str]
    valid_from: str | None
    valid_to: str | None


class OverviewPublic(BaseModel):
    """``GET /v1/payers/{payer_id}/overview``."""

    payer_id: str
    currency: str
    wallet_balance: int
    medical_account_balance: int
    years_insured: int  # distinct years with a premium in force, any scheme
    years_insured_by_scheme: dict[str, list[int]]
    current_year: int  # Asia/Shanghai
    insurance: list[CoveragePublic]  # per scheme and region ever paid: this year's status


class CertificatePublic(BaseModel):
    """``GET /v1/payers/{payer_id}/certificate``: the signed, masked certificate
    (电子参保凭证): Ed25519 by ``key_id`` over the canonical JSON of ``certificate``."""

    number: str
    check_code: str
    year: int
    certificate: dict[str, Any]  # the signed face (masked: it is shown in public too)
    signature: str
    key_id: str
    algorithm: str
    issued_at: datetime
    checked_count: int


class CertificateVerifyCreate(BaseModel):
    """``POST /v1/certificates/verify``: what the person reads off the certificate."""

    model_config = ConfigDict(extra="forbid")
    number: str = Field(pattern=r"^[0-9]{14}$", description="凭证编号, 14 digits")
    check_code: str = Field(pattern=r"^[A-Za-z2-7]{8}$", description="校验码, 8 characters")


class CertificateVerificationPublic(BaseModel):
    """The 查验 answer: a wrong check code answers exactly like an unknown number."""

    valid: bool
    current: bool | None = None  # False: the premiums it states changed since (a refund)
    certificate: dict[str, Any] | None = None  # the masked, signed face
    signature: str | None = None
    key_id: str | None = None
    algorithm: str | None = None
    checked_count: int = 0
