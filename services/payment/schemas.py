"""The payment API's request and response models (DESIGN.md "Contract: payment API")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.payment import domain, validation
from services.payment.premium_domain import DeclaredCategory, RowCategory
from services.payment.refund_domain import RefundPublicStatus
from services.payment.store import RefundTotals, StoredPayment, StoredRefund
from shared.events import DeclineCode, PaymentMethod, PurposeType, Relation, Scheme
from shared.masking import is_mobile_phone
from shared.money import shanghai_day, utcnow
from shared.regions import region_problem


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BeneficiaryCreate(_Input):
    """Whom the payment is for; the payer or a close relative."""

    id_number: str = Field(
        description="18-character resident ID number (GB 11643, check digit verified)",
        examples=["11010519491231002X"],
    )
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]
    relation: Relation
    category: DeclaredCategory | None = Field(
        None,
        description="a declared category: 'student' pays a resident premium as 学生儿童"
        " (under 60); otherwise the category follows from the age in the ID number",
    )

    @field_validator("id_number")
    @classmethod
    def _valid_id_number(cls, value: str) -> str:
        problem = validation.id_number_problem(value, shanghai_day(utcnow()))
        if problem is not None:
            raise ValueError(problem)
        return validation.normalize_id_number(value)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        if not value.isprintable():
            raise ValueError("a name has no control characters")
        return value


class PurposeCreate(_Input):
    type: PurposeType
    scheme: Scheme | None = Field(None, description="required for a premium")
    region: str = Field(
        description="6-digit GB/T 2260 region code of the collecting bureau",
        examples=["110000"],
    )
    period: str | None = Field(
        None,
        pattern=validation.PERIOD_RE.pattern,
        description="required for a premium: a year, a month or a quarter",
        examples=["2027", "2027-03", "2027-Q1"],
    )

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        problem = region_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


METADATA_MAX_KEYS = 20
METADATA_MAX_KEY = 40
METADATA_MAX_VALUE = 500
CLIENT_REFERENCE_MAX = 128


def metadata_problem(metadata: dict[str, str]) -> str | None:
    """Why ``metadata`` is not a small string map, or None."""
    if len(metadata) > METADATA_MAX_KEYS:
        return f"metadata has at most {METADATA_MAX_KEYS} keys"
    for key, value in metadata.items():
        if not 1 <= len(key) <= METADATA_MAX_KEY:
            return f"a metadata key has 1 to {METADATA_MAX_KEY} characters"
        if len(value) > METADATA_MAX_VALUE:
            return f"metadata value of {key!r} is longer than {METADATA_MAX_VALUE} characters"
    return None


class PaymentCreate(_Input):
    """A request to pay a premium or top up a wallet."""

    payer_id: str = Field(pattern=validation.PAYER_ID_RE.pattern, examples=["u-1001"])
    payer_phone: str = Field(description="mainland mobile number", examples=["13800138000"])
    beneficiary: BeneficiaryCreate
    purpose: PurposeCreate
    amount: int = Field(strict=True, gt=0, description="integer fen", examples=[38000])
    currency: Literal["CNY"] = "CNY"
    method: PaymentMethod
    # Issue 14, additive: the caller's own fields, returned wherever the payment is.
    metadata: dict[str, str] | None = Field(
        None,
        description=f"the caller's own string map: at most {METADATA_MAX_KEYS} keys of at"
        f" most {METADATA_MAX_KEY} characters, values of at most {METADATA_MAX_VALUE}",
        examples=[{"order": "20271-0001"}],
    )
    client_reference: str | None = Field(
        None,
        min_length=1,
        max_length=CLIENT_REFERENCE_MAX,
        description="the caller's own reference (an order number); a list filter",
        examples=["order-20271-0001"],
    )

    @field_validator("payer_phone")
    @classmethod
    def _mobile(cls, value: str) -> str:
        if not is_mobile_phone(value):
            raise ValueError("a mainland mobile number has 11 digits and starts with 13-19")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_map(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        problem = metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class PayerCreate(_Input):
    """An explicit enrolment of a payer: its phone (codes and notices go there) and who
    it is (the daily cap follows the person)."""

    phone: str = Field(description="mainland mobile number", examples=["13800138000"])
    id_number: str = Field(
        description="18-character resident ID number (GB 11643, check digit verified)",
        examples=["11010519491231002X"],
    )
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]

    @field_validator("phone")
    @classmethod
    def _mobile(cls, value: str) -> str:
        return PaymentCreate._mobile(value)

    @field_validator("id_number")
    @classmethod
    def _valid_id_number(cls, value: str) -> str:
        return BeneficiaryCreate._valid_id_number(value)

    @field_validator("name")
    @classmethod
    def _printable_name(cls, value: str) -> str:
        return BeneficiaryCreate._printable_name(value)


class PayerPublic(BaseModel):
    """An enrolled payer as its owner sees it: masked."""

    payer_id: str
    phone: str = Field(description="masked: 138****8000")
    id_number: str | None = Field(description="masked: first 6 + ******** + last 4")
    name: str | None = Field(description="masked: 张*")
    created_at: datetime


class VerificationCreate(_Input):
    """The SMS code the resident received."""

    code: str = Field(pattern=r"^[0-9]{6}$", examples=["123456"], description="6 digits")


class BeneficiaryPublic(BaseModel):
    id_number: str = Field(description="masked: first 6 + ******** + last 4")
    name: str
    relation: Relation


class PurposePublic(BaseModel):
    type: PurposeType
    scheme: Scheme | None
    region: str
    period: str | None


class NextAction(BaseModel):
    type: Literal["sms_verification"] = "sms_verification"
    expires_at: datetime


class ReceiptPublic(BaseModel):
    code: str
    number: str
    check_code: str


class FundsPublic(BaseModel):
    """When the payment's money is expected and when it arrived (UTC; null: not yet, or
    never for a payment that did not succeed). Wallet and medical account: expected at
    once, arrived when the ledger posted it. Bank card: expected within 2 hours
    (``PAYMENT_BANK_ARRIVAL_HOURS``) of the bank's confirmation, arrived when the ledger
    posted it (right after that confirmation)."""

    expected_by: datetime | None
    arrived_at: datetime | None


class PaymentPublic(BaseModel):
    """A payment as callers see it."""

    id: str
    status: domain.PublicStatus
    decline_code: DeclineCode | None
    decline_message: str | None
    next_action: NextAction | None
    receipt: ReceiptPublic | None
    amount: int
    currency: Literal["CNY"]
    method: PaymentMethod
    payer_id: str
    payer_phone: str = Field(description="masked: 138****8000")
    purpose: PurposePublic
    beneficiary: BeneficiaryPublic
    created_at: datetime
    updated_at: datetime
    refunded_amount: int = Field(0, description="fen refunded so far (succeeded refunds)")
    refunds: list[str] = Field(default_factory=list, description="the payment's refund ids")
    funds: FundsPublic | None = None
    metadata: dict[str, str] = Field(default_factory=dict, description="as the caller sent it")
    client_reference: str | None = None


class PaymentListPublic(BaseModel):
    """``GET /v1/payments``: a page of the caller's payments, newest first."""

    object: Literal["list"] = "list"
    data: list[PaymentPublic]
    has_more: bool = Field(description="more after the last one: pass its id as starting_after")


def public_view(
    stored: StoredPayment,
    *,
    totals: RefundTotals | None = None,
    policy: domain.BankPolicy | None = None,
) -> PaymentPublic:
    p = stored.payment
    d = p.details
    next_action = None
    if p.status is domain.Status.REQUIRES_VERIFICATION and p.verification_expires_at is not None:
        next_action = NextAction(expires_at=p.verification_expires_at)
    receipt = ReceiptPublic(**p.receipt.model_dump()) if p.receipt is not None else None
    return PaymentPublic(
        id=d.payment_id,
        status=p.public_status,
        decline_code=p.decline_code,
        decline_message=p.decline_message,
        next_action=next_action,
        receipt=receipt,
        amount=d.amount,
        currency=d.currency,
        method=d.method,
        payer_id=d.payer_id,
        payer_phone=d.payer_phone_masked,
        purpose=PurposePublic(**d.purpose.model_dump()),
        beneficiary=BeneficiaryPublic(
            id_number=d.beneficiary.id_number_masked,
            name=d.beneficiary.name,
            relation=d.beneficiary.relation,
        ),
        created_at=stored.created_at,
        updated_at=stored.updated_at,
        refunded_amount=totals.succeeded if totals is not None else 0,
        refunds=list(totals.refund_ids) if totals is not None else [],
        funds=_funds(p, policy or domain.BankPolicy()),
        metadata=stored.metadata,
        client_reference=stored.client_reference,
    )


def _funds(payment: domain.Payment, policy: domain.BankPolicy) -> FundsPublic:
    expected_by, arrived_at = domain.funds(payment, policy)
    return FundsPublic(expected_by=expected_by, arrived_at=arrived_at)


class RefundCreate(_Input):
    """A refund of part or all of a succeeded payment."""

    amount: int = Field(strict=True, gt=0, description="integer fen", examples=[10000])
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class RefundPublic(BaseModel):
    id: str
    payment_id: str
    amount: int
    status: RefundPublicStatus
    receipt: ReceiptPublic | None = Field(None, description="the red receipt, once issued")


def refund_view(stored: StoredRefund) -> RefundPublic:
    r = stored.refund
    receipt = ReceiptPublic(**r.receipt.model_dump()) if r.receipt is not None else None
    return RefundPublic(
        id=r.id, payment_id=r.payment_id, amount=r.amount, status=r.public_status, receipt=receipt
    )


class AllocationLineCreate(_Input):
    payer_id: str = Field(pattern=validation.PAYER_ID_RE.pattern, examples=["u-1001"])
    amount: int = Field(strict=True, gt=0, le=10**12, description="integer fen")


class AllocationCreate(_Input):
    """A bureau's allocation file: credit each payer's personal medical account."""

    region: str = Field(description="6-digit GB/T 2260 region code", examples=["110000"])
    period: str = Field(pattern=validation.PERIOD_RE.pattern, examples=["2027-01"])
    lines: list[AllocationLineCreate] = Field(min_length=1, max_length=10_000)

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        problem = region_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class AllocationLinePublic(BaseModel):
    payer_id: str
    amount: int
    allocation_id: str
    status: Literal["allocated", "already_allocated"]


class AllocationPublic(BaseModel):
    region: str
    period: str
    lines: list[AllocationLinePublic]


class PremiumRowPublic(BaseModel):
    """One row of the premium schedule that applies."""

    scheme: Scheme
    region: str = Field(description="the region whose row this is, or 'national'")
    year: int
    category: RowCategory = Field(
        description="elderly (老年人, 60+), student_child (学生儿童: under 18, or a declared"
        " student), working_age (劳动年龄内居民), or all"
    )
    category_name: str
    amount: int | None = Field(description="the exact yearly premium in fen (resident)")
    min_amount: int = Field(description="fen per `per`")
    max_amount: int = Field(description="fen per `per`")
    per: Literal["year", "month"] = Field(description="a quarter pays three months")
    national_fallback: bool = Field(
        description="the national minimum, used because the region has no row of its own"
    )
    source: str


class PremiumSchemePublic(BaseModel):
    scheme: Scheme
    periods: str = Field(description="the billing periods the scheme takes", examples=["YYYY"])
    scheduled: bool = Field(
        description="false: no schedule (commercial_health: any positive amount within the"
        " method limit)"
    )
    rows: list[PremiumRowPublic] = Field(
        description="empty for a scheduled scheme: no premium for that region and year yet"
        " (a payment is refused with premium_not_scheduled)"
    )


class PremiumSchedulePublic(BaseModel):
    """``GET /v1/premiums``: what a premium of each scheme costs in a region and year."""

    region: str
    year: int
    schemes: list[PremiumSchemePublic]


# ---------------------------------------------------------------------------
# Payer steps confirmed by an SMS code: phone change, family binding, records session
# ---------------------------------------------------------------------------

CodeStepStatus = Literal["pending"]


class PhoneChangeCreate(_Input):
    """A new phone for the payer: the code goes there (proving the resident holds it)."""

    phone: str = Field(description="mainland mobile number", examples=["13900139000"])

    @field_validator("phone")
    @classmethod
    def _mobile(cls, value: str) -> str:
        return PaymentCreate._mobile(value)


class PhoneChangePublic(BaseModel):
    """A phone change waiting for the code sent to the new phone."""

    id: str = Field(description="the change id (pc_…), for its verification")
    payer_id: str
    phone: str = Field(description="the new phone, masked")
    status: CodeStepStatus
    expires_at: datetime = Field(description="when the code expires")


# A relative's relation to the payer: a close relative (DOMAIN.md), never "self".
RelativeRelation = Literal["spouse", "parent", "child", "sibling", "grandparent", "grandchild"]


class RelativeCreate(_Input):
    """Bind a close relative (家庭共济): an enrolled payer of the same caller, with its
    ID number known. The code goes to the relative's enrolled phone."""

    relative_payer_id: str = Field(pattern=validation.PAYER_ID_RE.pattern, examples=["u-1002"])
    relation: RelativeRelation = Field(description="what the relative is to the payer")


class RelativePublic(BaseModel):
    """A family binding as its owner sees it: the relative masked."""

    relative_payer_id: str
    relation: RelativeRelation
    name: str | None = Field(description="masked: 张*")
    id_number: str | None = Field(description="masked: first 6 + ******** + last 4")
    status: Literal["pending", "bound", "unbound"]
    requested_at: datetime
    bound_at: datetime | None
    unbound_at: datetime | None
    code_expires_at: datetime | None = Field(
        None, description="pending: when the code sent to the relative expires"
    )


class RelativeListPublic(BaseModel):
    payer_id: str
    relatives: list[RelativePublic]


class RecordsSessionPublic(BaseModel):
    """A records session waiting for the code sent to the enrolled phone."""

    id: str = Field(description="the session id (pc_…), for its verification")
    payer_id: str
    phone: str = Field(description="the enrolled phone the code went to, masked")
    status: CodeStepStatus
    expires_at: datetime = Field(description="when the code expires")


class RecordsSessionTokenPublic(BaseModel):
    """The session token: send it as ``X-Records-Session`` to read detailed records."""

    token: str
    expires_at: datetime


class ErasureCreate(_Input):
    """``POST /v1/erasures`` (operator role): whose personal data to erase, by exactly
    one of the ID number (the person, every payer and payment naming them) or a payer id
    (that payer's person, or the payer record alone when it has no ID number)."""

    id_number: str | None = Field(
        None, description="18-character resident ID number", examples=["11010519491231002X"]
    )
    payer_id: str | None = Field(None, min_length=1, max_length=64, examples=["u-1001"])

    @field_validator("id_number")
    @classmethod
    def _valid_id_number(cls, value: str | None) -> str | None:
        return None if value is None else BeneficiaryCreate._valid_id_number(value)

    @model_validator(mode="after")
    def _exactly_one(self) -> ErasureCreate:
        if (self.id_number is None) == (self.payer_id is None):
            raise ValueError("send exactly one of id_number and payer_id")
        return self


class ErasurePublic(BaseModel):
    """What an erasure did (answered again, ``replayed``, when asked again)."""

    id: str = Field(description="er_…")
    erased_at: datetime
    key_ids: list[str] = Field(description="the person keys destroyed")
    payer_ids: list[str] = Field(description="payer records scrubbed (the ids stay)")
    payments: int = Field(description="payments of this service scrubbed of the person")
    erased: list[str] = Field(description="the fields erased, on the log and in projections")
    kept: list[str] = Field(description="what stays by law (accounting records)")
    replayed: bool = False
