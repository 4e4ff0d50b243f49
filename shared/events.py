"""The event contract: the envelope every message carries and the payloads behind it.

Every event that crosses a service boundary is declared here, once, as a frozen
pydantic model with an ``event_type`` and a ``schema_version``. Readers decode
older versions through upcasters; an unknown type, or a version newer than this
code knows, raises ``UndecodableEvent`` so the consumer can dead-letter it.

Wire form: UTF-8 JSON of the envelope; ``payload`` is the payload model dumped to
JSON types. Amounts are integer fen with ``currency: "CNY"``; times are UTC.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from shared.errors import UndecodableEvent

Producer = Literal["payment", "risk", "ledger", "notify"]
Fen = int  # amounts are integers in fen (1 CNY = 100 fen); never floats
Currency = Literal["CNY"]

PaymentMethod = Literal["wallet", "bank_card", "medical_account"]
PurposeType = Literal["premium", "wallet_topup"]
Scheme = Literal["urban_rural_resident", "flexible_employment", "commercial_health"]
Relation = Literal["self", "spouse", "parent", "child", "sibling", "grandparent", "grandchild"]
# How residents read each relation (receipts' 参保人 line, family-binding SMS).
RELATION_NAMES: dict[Relation, str] = {
    "self": "本人",
    "spouse": "配偶",
    "parent": "父母",
    "child": "子女",
    "sibling": "兄弟姐妹",
    "grandparent": "祖父母/外祖父母",
    "grandchild": "孙子女/外孙子女",
}
DeclineCode = Literal[
    "daily_limit_exceeded",
    "method_limit_exceeded",
    "verification_failed",
    "verification_expired",
    "insufficient_funds",
    "bank_declined",
    "bank_unavailable",
    "refund_exceeds_payment",
]
# What a journal entry books: a payment (premium or top-up), a refund of one, the
# bureau's credit to a personal medical account (个账划入), or settlement (清算): a
# closed day's transfer instructed to the bank, and its arrival at the bureau.
EntryKind = Literal[
    "premium", "wallet_topup", "refund", "allocation", "settlement", "settlement_arrival"
]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class Envelope(Frozen):
    """DESIGN.md "Contract: events": the fields every message carries."""

    event_id: uuid.UUID
    event_type: str
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    producer: Producer
    key: str
    correlation_id: str | None
    causation_id: uuid.UUID | None
    payload: dict[str, Any]

    _utc_time = field_validator("occurred_at")(_utc)


class EventPayload(Frozen):
    """Base of every payload; subclasses set both class variables and register."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1


P = TypeVar("P", bound=EventPayload)

_REGISTRY: dict[str, type[EventPayload]] = {}
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def register(cls: type[P]) -> type[P]:
    """Class decorator: make ``cls`` decodable by its ``event_type``."""
    if cls.event_type in _REGISTRY:
        raise ValueError(f"event type {cls.event_type} registered twice")
    _REGISTRY[cls.event_type] = cls
    return cls


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns a ``from_version`` payload into the next version."""

    def deco(fn: Upcaster) -> Upcaster:
        _UPCASTERS[(event_type, from_version)] = fn
        return fn

    return deco


def payload_type(event_type: str) -> type[EventPayload]:
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise UndecodableEvent(f"unknown event_type {event_type!r}") from None


@dataclass(frozen=True)
class Event:
    """A decoded message: the envelope and its typed, upcast payload."""

    envelope: Envelope
    payload: EventPayload

    @property
    def event_id(self) -> uuid.UUID:
        return self.envelope.event_id

    @property
    def event_type(self) -> str:
        return self.envelope.event_type


def new_event(
    payload: EventPayload,
    *,
    producer: Producer,
    key: str,
    correlation_id: str | None,
    causation_id: uuid.UUID | None = None,
    occurred_at: datetime | None = None,
    event_id: uuid.UUID | None = None,
) -> Envelope:
    """Wrap a payload in a fresh envelope."""
    return Envelope(
        event_id=event_id or uuid.uuid4(),
        event_type=payload.event_type,
        schema_version=payload.schema_version,
        occurred_at=occurred_at or datetime.now(UTC),
        producer=producer,
        key=key,
        correlation_id=correlation_id,
        causation_id=causation_id,
        payload=payload.model_dump(mode="json"),
    )


@dataclass(frozen=True)
class EventFactory:
    """The one way a service builds its events: ``EVENTS = EventFactory("risk")`` in
    the service, then ``EVENTS.new(payload, key=..., correlation_id=..., causation_id=...)``."""

    producer: Producer

    def new(
        self,
        payload: EventPayload,
        *,
        key: str,
        correlation_id: str | None,
        causation_id: uuid.UUID | None = None,
        occurred_at: datetime | None = None,
        event_id: uuid.UUID | None = None,
    ) -> Envelope:
        return new_event(
            payload,
            producer=self.producer,
            key=key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            occurred_at=occurred_at,
            event_id=event_id,
        )


def encode(envelope: Envelope) -> bytes:
    return envelope.model_dump_json().encode()


def decode_envelope(raw: bytes | None) -> Envelope:
    if raw is None:
        raise UndecodableEvent("message has no value")
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise UndecodableEvent(f"not a valid envelope: {exc.errors()[:3]}") from exc


def decode_payload(envelope: Envelope) -> EventPayload:
    """Upcast ``envelope.payload`` to the version this code knows, then validate it."""
    cls = payload_type(envelope.event_type)
    version, data = envelope.schema_version, dict(envelope.payload)
    if version > cls.schema_version:
        raise UndecodableEvent(
            f"{envelope.event_type} schema_version {version} is newer than this reader's "
            f"{cls.schema_version}; upgrade the consumer"
        )
    while version < cls.schema_version:
        step = _UPCASTERS.get((envelope.event_type, version))
        if step is None:
            raise UndecodableEvent(
                f"no upcaster for {envelope.event_type} from schema_version {version}"
            )
        data, version = step(data), version + 1
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise UndecodableEvent(
            f"invalid {envelope.event_type} payload: {exc.errors()[:3]}"
        ) from exc


def decode(raw: bytes | None) -> Event:
    envelope = decode_envelope(raw)
    return Event(envelope, decode_payload(envelope))


# ---------------------------------------------------------------------------
# Value objects shared by several payloads
# ---------------------------------------------------------------------------


class Purpose(Frozen):
    type: PurposeType
    scheme: Scheme | None = None
    region: str = Field(pattern=r"^[0-9]{6}$")
    period: str | None = None


class BeneficiaryRef(Frozen):
    """A beneficiary as events carry it: never the clear ID number."""

    id_number_masked: str
    id_number_hash: str  # keyed HMAC, for look-up without the clear value
    name: str
    relation: Relation
    # Issue 11: ``name`` and ``id_number_masked`` sealed under the person's key
    # (shared/personal.py, AAD ``personal_aad(payment_id)``). On the log both clear
    # fields are then "" (``PaymentDetails.for_log``); absent in older events.
    personal: str | None = None


class PaymentDetails(Frozen):
    """What was asked to be paid; carried by PaymentRequested and PaymentAuthorized."""

    payment_id: str
    payer_id: str
    payer_phone_masked: str
    # AES-GCM, AAD = phone_aad(payment_id). Since issue 11 (erasure of the phone) a
    # ``p1.`` blob under the payer's person key with the phone and its masked form
    # (shared.personal.seal_phone / open_phone); ``payer_phone_masked`` is then "" on
    # the log (``for_log``). Before: sealed under the system seal key.
    payer_phone_sealed: str
    beneficiary: BeneficiaryRef
    purpose: Purpose
    amount: Fen = Field(gt=0)
    currency: Currency = "CNY"
    method: PaymentMethod
    payee_id: str  # e.g. "bureau:110000" or "wallet:u-1001"
    payee_name: str
    requested_at: AwareDatetime
    # The payer as a person: keyed hash of the enrolled payer's ID number, when known.
    # The daily cap follows it (not the caller-chosen payer_id). Absent in older events.
    payer_id_hash: str | None = None
    # The caller (upstream system) that created the payment: its pseudonymous id, never
    # its key. Owns the payment's receipts (full face) and refunds. Absent in older events.
    caller_id: str | None = None

    _utc_time = field_validator("requested_at")(_utc)

    def for_log(self) -> PaymentDetails:
        """As events carry it: with the beneficiary's fields sealed (``personal``), the
        clear name and masked ID number are left out of the kept-forever log; with the
        phone sealed per person, its masked form too."""
        update: dict[str, Any] = {"payer_phone_masked": self.phone_masked_for_log()}
        b = self.beneficiary
        if b.personal is not None:
            update["beneficiary"] = b.model_copy(update={"name": "", "id_number_masked": ""})
        return self.model_copy(update=update)

    def phone_masked_for_log(self) -> str:
        """``payer_phone_masked`` as events carry it: "" once the phone is sealed per
        person (its masked form is inside the blob)."""
        return "" if self.payer_phone_sealed.startswith("p1.") else self.payer_phone_masked


class ReceiptRef(Frozen):
    code: str
    number: str
    check_code: str


class BankConfirmation(Frozen):
    """The acquiring bank's confirmation of a debit or refund (development bank:
    DESIGN.md "Contract additions: money from outside")."""

    reference: str  # our id at the bank; the bank dedupes on it
    confirmed_at: AwareDatetime

    _utc_time = field_validator("confirmed_at")(_utc)


class JournalLine(Frozen):
    account_id: str
    amount: Fen  # signed: negative leaves the account, positive enters it


# ---------------------------------------------------------------------------
# payments.v1 (producer: payment, key: payer_id)
# ---------------------------------------------------------------------------


@register
class PaymentRequested(EventPayload):
    """v2: ``payment.beneficiary.personal`` (issue 11), optional."""

    event_type: ClassVar[str] = "PaymentRequested"
    schema_version: ClassVar[int] = 2
    payment: PaymentDetails


@upcaster("PaymentRequested", 1)
def _requested_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only added an optional field: v1 names stay in the clear


@register
class PaymentVerificationRequired(EventPayload):
    event_type: ClassVar[str] = "PaymentVerificationRequired"
    payment_id: str
    payer_id: str
    expires_at: AwareDatetime


@register
class PaymentAuthorized(EventPayload):
    """Risk (and, for a bank card, the bank) said yes: the ledger may book it.

    v2: ``bank_debit``, the bank's confirmation; present exactly when the method is
    ``bank_card`` (the ledger books no bank-card money the bank has not confirmed).
    v3: ``payment.beneficiary.personal`` (issue 11), optional.
    """

    event_type: ClassVar[str] = "PaymentAuthorized"
    schema_version: ClassVar[int] = 3
    payment: PaymentDetails
    stepped_up: bool
    bank_debit: BankConfirmation | None = None


@upcaster("PaymentAuthorized", 1)
def _authorized_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    # v1 had no bank: bank-card money was booked on the cashier's word.
    return {**data, "bank_debit": None}


@upcaster("PaymentAuthorized", 2)
def _authorized_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v3 only added an optional field: v2 names stay in the clear


@register
class PersonalDataErased(EventPayload):
    """An operator erased a person's personal data (issue 11): their person keys are
    destroyed, so every blob sealed under ``key_ids`` opens for nobody. Carries no
    personal data; the record auditors count erased receipts by. Key: ``erasure_id``."""

    event_type: ClassVar[str] = "PersonalDataErased"
    erasure_id: str  # "er_…"
    key_ids: tuple[str, ...]
    payer_ids: tuple[str, ...]  # the pseudonyms whose records were scrubbed
    erased_at: AwareDatetime

    _utc_time = field_validator("erased_at")(_utc)


@register
class MedicalAccountAllocated(EventPayload):
    """The bureau credited a personal medical account (个账划入); one per line of an
    allocation file, idempotent by (region, period, payer_id)."""

    event_type: ClassVar[str] = "MedicalAccountAllocated"
    allocation_id: str  # "al_…"
    region: str = Field(pattern=r"^[0-9]{6}$")
    period: str
    payer_id: str
    amount: Fen = Field(gt=0)
    currency: Currency = "CNY"
    allocated_at: AwareDatetime
    payer_phone_masked: str | None  # the payer's known phone, for the balance SMS ("" since
    # issue 11: inside the sealed phone)
    payer_phone_sealed: str | None  # AAD = phone_aad(allocation_id); per person since issue 11

    _utc_time = field_validator("allocated_at")(_utc)


@register
class PayerEnrolled(EventPayload):
    """A payer enrolled to a caller (payment API): the owner of its accounts.
    No personal data: the keyed hash of the ID number, when known, for look-up."""

    event_type: ClassVar[str] = "PayerEnrolled"
    payer_id: str
    caller_id: str
    id_number_hash: str | None
    enrolled_at: AwareDatetime

    _utc_time = field_validator("enrolled_at")(_utc)


@register
class RefundAuthorized(EventPayload):
    """A refund the ledger may book: the money goes back the way it came. For a bank
    card the bank has already confirmed it (``bank_refund``)."""

    event_type: ClassVar[str] = "RefundAuthorized"
    refund_id: str  # "re_…"
    payment_id: str
    payer_id: str
    amount: Fen = Field(gt=0)
    currency: Currency = "CNY"
    method: PaymentMethod
    purpose: Purpose
    payee_id: str
    payee_name: str
    original_journal_seq: int
    original_receipt: ReceiptRef | None
    bank_refund: BankConfirmation | None = None
    payer_phone_masked: str
    payer_phone_sealed: str  # as on PaymentDetails (per person since issue 11)
    authorized_at: AwareDatetime
    caller_id: str | None = None  # the payment's owner, as on PaymentDetails

    _utc_time = field_validator("authorized_at")(_utc)


class _RefundOutcome(EventPayload):
    refund_id: str
    payment_id: str
    payer_id: str
    amount: Fen
    currency: Currency = "CNY"
    method: PaymentMethod
    payer_phone_masked: str
    payer_phone_sealed: str  # as on PaymentDetails (per person since issue 11)


@register
class RefundSucceeded(_RefundOutcome):
    event_type: ClassVar[str] = "RefundSucceeded"
    journal_seq: int
    receipt: ReceiptRef | None  # the red receipt (红冲), for a premium
    original_receipt: ReceiptRef | None
    refunded_total: Fen  # of the payment, this refund included


@register
class RefundFailed(_RefundOutcome):
    event_type: ClassVar[str] = "RefundFailed"
    decline_code: DeclineCode
    message: str


class _PaymentOutcome(EventPayload):
    payment_id: str
    payer_id: str
    amount: Fen
    currency: Currency = "CNY"
    method: PaymentMethod
    purpose_type: PurposeType
    payee_name: str
    payer_phone_masked: str
    payer_phone_sealed: str


@register
class PaymentSucceeded(_PaymentOutcome):
    event_type: ClassVar[str] = "PaymentSucceeded"
    journal_seq: int
    receipt: ReceiptRef | None


@register
class PaymentDeclined(_PaymentOutcome):
    event_type: ClassVar[str] = "PaymentDeclined"
    decline_code: DeclineCode
    message: str


@register
class PaymentFailed(_PaymentOutcome):
    event_type: ClassVar[str] = "PaymentFailed"
    decline_code: DeclineCode
    message: str


PayerCodePurpose = Literal["phone_change", "family_binding", "records_session"]


@register
class PayerCodeIssued(EventPayload):
    """An SMS code that confirms a step on an enrolled payer (payment API): a new phone
    (``phone_change``: the code goes to the new phone, a notice to the replaced one),
    a relative's consent to a family binding (``family_binding``: the code goes to the
    relative's enrolled phone), or a records session (``records_session``). notify
    sends it once. No clear values: the phones and the code are sealed for notify."""

    event_type: ClassVar[str] = "PayerCodeIssued"
    code_id: str  # "pc_…"
    payer_id: str
    purpose: PayerCodePurpose
    phone_masked: str  # where the code goes; "" since issue 11 (inside ``phone_sealed``)
    # AES-GCM, AAD = phone_aad(code_id); since issue 11 under the person key of the
    # phone's owner (shared.personal.seal_phone), with its masked form inside.
    phone_sealed: str
    code_sealed: str  # AES-GCM, AAD = code_aad(code_id)
    expires_at: AwareDatetime
    # family_binding: what the relative is to the payer, and the payer's masked name.
    relation: Relation | None = None
    payer_name_masked: str | None = None
    # phone_change: the phone being replaced, told of the change (AAD = phone_aad(code_id)).
    replaced_phone_sealed: str | None = None

    _utc_time = field_validator("expires_at")(_utc)


# ---------------------------------------------------------------------------
# risk.v1 (producer: risk, key: payer_id)
# ---------------------------------------------------------------------------


class _CapFigures(EventPayload):
    payment_id: str
    payer_id: str
    day: str  # the Asia/Shanghai calendar day the cap applies to, YYYY-MM-DD
    cap: Fen
    used: Fen  # kept + reserved today, including this payment when approved
    remaining: Fen


@register
class RiskApproved(_CapFigures):
    event_type: ClassVar[str] = "RiskApproved"


@register
class RiskDeclined(_CapFigures):
    event_type: ClassVar[str] = "RiskDeclined"
    decline_code: DeclineCode
    message: str


@register
class StepUpRequired(_CapFigures):
    event_type: ClassVar[str] = "StepUpRequired"
    challenge_id: str
    expires_at: AwareDatetime
    amount: Fen
    payee_name: str
    code_sealed: str  # AES-GCM, AAD = challenge_id; only notify opens it
    payer_phone_sealed: str


@register
class StepUpPassed(EventPayload):
    event_type: ClassVar[str] = "StepUpPassed"
    payment_id: str
    payer_id: str
    challenge_id: str


@register
class StepUpFailed(EventPayload):
    event_type: ClassVar[str] = "StepUpFailed"
    payment_id: str
    payer_id: str
    challenge_id: str
    attempts_left: int
    final: bool  # True: the challenge is dead and the payment is declined
    decline_code: DeclineCode | None


@register
class LimitReleased(EventPayload):
    event_type: ClassVar[str] = "LimitReleased"
    payment_id: str
    payer_id: str
    day: str
    amount: Fen
    used: Fen


# ---------------------------------------------------------------------------
# ledger.v1 (producer: ledger, key: payer_id; one partition = journal order)
# ---------------------------------------------------------------------------


@register
class JournalEntryPosted(EventPayload):
    """One journal transaction. Hashed over its JSON form without ``hash`` and
    ``signature``; fields that v1 did not have are left out of that form while they are
    null, so every v1 entry hashes exactly as it did (services/ledger/domain:
    ``entry_body``).

    v2: ``kind`` may be ``refund`` (then ``refund_id``) or ``allocation`` (then
    ``payment_id`` is the allocation id); ``bank_reference`` for bank-card money.
    Settlement added optional fields, still v2 (absent means as before): ``kind`` may
    be ``settlement`` / ``settlement_arrival`` (then ``payment_id`` is the transfer
    reference, ``payer_id`` the region);
    ``clearing_day`` (清算日, YYYY-MM-DD, decided at posting); ``bank_confirmed_at``
    (the bank's confirmation of ``bank_reference``); ``key_id`` and ``signature``
    (Ed25519 by the ledger's key over the ASCII of ``hash``; not hashed).
    """

    event_type: ClassVar[str] = "JournalEntryPosted"
    schema_version: ClassVar[int] = 2
    V1_ABSENT: ClassVar[frozenset[str]] = frozenset(
        {"refund_id", "bank_reference", "clearing_day", "bank_confirmed_at", "key_id"}
    )
    UNHASHED: ClassVar[frozenset[str]] = frozenset({"hash", "signature"})
    seq: int = Field(ge=1)  # gapless over the whole journal
    transaction_id: str
    payment_id: str
    payer_id: str
    kind: EntryKind
    lines: tuple[JournalLine, ...]
    currency: Currency = "CNY"
    posted_at: AwareDatetime
    receipt: ReceiptRef | None
    prev_hash: str
    hash: str
    refund_id: str | None = None
    bank_reference: str | None = None
    clearing_day: str | None = Field(None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    bank_confirmed_at: AwareDatetime | None = None
    key_id: str | None = None
    signature: str | None = None

    _utc_time = field_validator("posted_at")(_utc)
    _utc_confirmed = field_validator("bank_confirmed_at")(_utc_or_none)


@upcaster("JournalEntryPosted", 1)
def _entry_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return data  # v2 only added optional fields; their absence hashes as in v1


@register
class ReceiptIssued(EventPayload):
    event_type: ClassVar[str] = "ReceiptIssued"
    payment_id: str
    payer_id: str
    journal_seq: int
    receipt: dict[str, Any]  # the signed face; the ledger defines its fields
    signature: str  # Ed25519 over the canonical JSON of ``receipt``, base64
    key_id: str
    payer_phone_sealed: str
    refund_id: str | None = None  # set on a red receipt (红冲)
    caller_id: str | None = None  # the owning caller: reads the full face with its key
    # Outside the signed face, for the resident's records (issue 12), absent in older
    # events: the insured person's keyed ID hash (BeneficiaryRef.id_number_hash) and
    # what the premium paid for (scheme, region, period).
    insured_id_hash: str | None = None
    purpose: Purpose | None = None


@register
class PostingRejected(EventPayload):
    event_type: ClassVar[str] = "PostingRejected"
    payment_id: str
    payer_id: str
    decline_code: DeclineCode
    account_id: str
    balance: Fen
    amount: Fen
    message: str
    refund_id: str | None = None  # set when a refund was refused


class JournalCheckpoint(Frozen):
    """The journal's head, signed: Ed25519 by the ledger's key over the canonical JSON
    (RFC 8785) of ``{"seq", "hash", "at"}``; anyone holding one can later prove the
    journal still reaches ``seq`` with exactly ``hash``."""

    seq: int = Field(ge=0)
    hash: str
    at: str  # RFC 3339 UTC, as signed
    key_id: str
    signature: str  # base64


class RegionSettlement(Frozen):
    """One bureau's figures of a closed clearing day (fen). ``net = paid - refunded +
    carried_in``; a positive net is transferred (``transfer_amount``), a net at or
    below zero transfers nothing and is carried into the region's next close
    (``carried_out``, a deduction)."""

    region: str = Field(pattern=r"^[0-9]{6}$")
    count: int = Field(ge=0)  # payment and refund lines of the day
    paid: Fen = Field(ge=0)
    refunded: Fen = Field(ge=0)
    carried_in: Fen = Field(le=0)  # a deficit carried from an earlier close
    net: Fen
    transfer_amount: Fen = Field(ge=0)
    transfer_reference: str | None  # None when nothing is transferred
    carried_out: Fen = Field(le=0)


@register
class ClearingDayClosed(EventPayload):
    """A clearing day (清算日) closed: its figures per bureau, the settlement entries
    posted before it (one per positive net), and the journal's signed head after them.
    Key: the day."""

    event_type: ClassVar[str] = "ClearingDayClosed"
    day: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    closed_at: AwareDatetime
    forced: bool
    bank: str
    regions: tuple[RegionSettlement, ...]
    checkpoint: JournalCheckpoint

    _utc_time = field_validator("closed_at")(_utc)


class StatementDiscrepancy(Frozen):
    kind: Literal["missing_in_bank", "missing_in_ledger", "amount_mismatch", "duplicate"]
    reference: str
    bank_kind: Literal["debit", "refund", "transfer"]
    payment_id: str | None
    journal_seq: int | None
    ledger_amount: Fen | None
    bank_amount: Fen | None


@register
class BankStatementReconciled(EventPayload):
    """A bank's statement of a day matched against the journal as it stood at
    ``journal_seq``. ``statement`` is the statement's exact text (its sha256 is
    ``statement_sha256``), so an auditor recomputes the outcome. Key: the day."""

    event_type: ClassVar[str] = "BankStatementReconciled"
    day: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    bank: str
    cutoff: str  # HH:MM: the bank day of a confirmation time, as the ledger computed it
    statement_sha256: str
    statement: str
    journal_seq: int = Field(ge=0)
    matched: int = Field(ge=0)
    reversed: int = Field(0, ge=0)  # bank lines of debits the bank itself reversed
    discrepancies: tuple[StatementDiscrepancy, ...]
    reconciled_at: AwareDatetime

    _utc_time = field_validator("reconciled_at")(_utc)


# ---------------------------------------------------------------------------
# person-keys.v1 (producer: payment, key: key_id; compacted, see shared/personal.py)
# ---------------------------------------------------------------------------


@register
class PersonKeyIssued(EventPayload):
    """A person's data key, sealed under the system seal key (AAD
    ``person_key_aad(key_id)``), for the services that show that person's fields."""

    event_type: ClassVar[str] = "PersonKeyIssued"
    key_id: str
    key_sealed: str


@register
class PersonKeyErased(EventPayload):
    """The key is destroyed: readers drop their copy. The last record of ``key_id`` on
    the compacted topic, so compaction removes the ``PersonKeyIssued`` before it."""

    event_type: ClassVar[str] = "PersonKeyErased"
    key_id: str
    erased_at: AwareDatetime

    _utc_time = field_validator("erased_at")(_utc)


# ---------------------------------------------------------------------------
# notify.v1 (producer: notify, key: payer_id)
# ---------------------------------------------------------------------------


@register
class NotificationSent(EventPayload):
    event_type: ClassVar[str] = "NotificationSent"
    notification_id: str
    # payer codes (PayerCodeIssued) are "sms_code" too; "security_notice" tells a
    # replaced phone of a phone change. payment_id: the code id for both.
    kind: Literal[
        "sms_code",
        "payment_result",
        "receipt",
        "refund_result",
        "balance_change",
        "security_notice",
    ]
    payment_id: str
    source_event_id: uuid.UUID
    phone_masked: str
    message_id: str
