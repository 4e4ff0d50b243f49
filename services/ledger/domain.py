"""The ledger's rules: chart of accounts, postings and the hash chain.

Pure: no I/O, no clock. ``decide_posting`` turns an authorized payment plus the
ledger's current state into the events that record every decision (sequence number,
posting time, receipt number, check code, signature); ``services.ledger.projector``
folds those events into balances and receipts, the same way live and in replay.
Receipt rules (code, number, check code, face) live in ``services.ledger.receipts``.

Accounts (balances are signed fen; a positive line enters an account):

- ``wallet:{payer_id}``          the payer's wallet (零钱); never negative
- ``medical:{payer_id}``         the payer's personal medical account (个人账户); never negative
- ``bank:funding``               money from outside (bank cards); goes negative as money enters
- ``clearing:platform``          platform clearing; every entry nets it to zero
- ``bureau:{region}:premium``    premiums received by a region's bureau (医保局)
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.ledger.canonical import canonical_json
from services.ledger.receipts import (
    ReceiptPolicy,
    Signer,
    check_code,
    receipt_code,
    receipt_face,
    receipt_number,
    sign_face,
)
from shared.errors import DomainError
from shared.events import (
    JournalEntryPosted,
    JournalLine,
    PaymentDetails,
    PaymentMethod,
    PostingRejected,
    ReceiptIssued,
    ReceiptRef,
)
from shared.money import format_cny

GENESIS_HASH = "0" * 64
LEDGER_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://yibao.example/ledger")

BANK_FUNDING = "bank:funding"
CLEARING = "clearing:platform"
NON_NEGATIVE_PREFIXES = ("wallet:", "medical:")

_PAYER_ID = r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}"
ACCOUNT_ID_RE = re.compile(
    rf"^(?:wallet:{_PAYER_ID}|medical:{_PAYER_ID}|bureau:\d{{6}}:premium"
    rf"|{re.escape(BANK_FUNDING)}|{re.escape(CLEARING)})$"
)


class InvalidPosting(DomainError):
    """An authorized payment the chart of accounts cannot route (upstream bug)."""

    code = "invalid_posting"


# ---------------------------------------------------------------------------
# Accounts
# ---------------------------------------------------------------------------


def wallet(payer_id: str) -> str:
    return f"wallet:{payer_id}"


def medical(payer_id: str) -> str:
    return f"medical:{payer_id}"


def bureau_premium(region: str) -> str:
    return f"bureau:{region}:premium"


def is_well_formed_account(account_id: str) -> bool:
    return bool(ACCOUNT_ID_RE.match(account_id))


def must_stay_non_negative(account_id: str) -> bool:
    return account_id.startswith(NON_NEGATIVE_PREFIXES)


def source_account(payment: PaymentDetails) -> str:
    """Where the money leaves from, by payment method."""
    by_method: dict[PaymentMethod, str] = {
        "wallet": wallet(payment.payer_id),
        "bank_card": BANK_FUNDING,
        "medical_account": medical(payment.payer_id),
    }
    return by_method[payment.method]


def destination_account(payment: PaymentDetails) -> str:
    """Where the money arrives, by purpose; a wallet top-up must come from a bank card."""
    if payment.purpose.type == "premium":
        return bureau_premium(payment.purpose.region)
    if payment.method != "bank_card":
        raise InvalidPosting(
            f"payment {payment.payment_id}: a wallet top-up must be paid by bank_card, "
            f"not {payment.method}; the payment API should have refused it",
            param="method",
        )
    return wallet(payment.payer_id)


def posting_lines(source: str, destination: str, amount: int) -> tuple[JournalLine, ...]:
    """Source → platform clearing → destination: sums to zero, clearing nets to zero."""
    return (
        JournalLine(account_id=source, amount=-amount),
        JournalLine(account_id=CLEARING, amount=amount),
        JournalLine(account_id=CLEARING, amount=-amount),
        JournalLine(account_id=destination, amount=amount),
    )


# ---------------------------------------------------------------------------
# Hash chain
# ---------------------------------------------------------------------------


def entry_body(entry: JournalEntryPosted) -> dict[str, Any]:
    """The entry as hashed: its JSON form without ``hash``."""
    return entry.model_dump(mode="json", exclude={"hash"})


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    """sha256(prev_hash + canonical_json(entry without hash)), hex."""
    return hashlib.sha256((prev_hash + canonical_json(body)).encode()).hexdigest()


def hash_of(entry: JournalEntryPosted) -> str:
    return chain_hash(entry.prev_hash, entry_body(entry))


def transaction_id(payment_id: str) -> str:
    """One payment, one transaction: the id is derived, never drawn."""
    return str(uuid.uuid5(LEDGER_NAMESPACE, f"payment:{payment_id}"))


def event_id_for(payment_id: str, event_type: str) -> uuid.UUID:
    """Deterministic ids for the ledger's own events (a re-decision cannot fork them)."""
    return uuid.uuid5(LEDGER_NAMESPACE, f"{event_type}:{payment_id}")


# ---------------------------------------------------------------------------
# Head: what the next posting needs to know
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerHead:
    """The end of the journal: last seq and hash, next receipt number per code."""

    seq: int = 0
    hash: str = GENESIS_HASH
    next_receipt_numbers: Mapping[str, int] = field(default_factory=dict)

    def next_receipt_number(self, code: str) -> int:
        return self.next_receipt_numbers.get(code, 1)


@dataclass(frozen=True)
class PostingKeys:
    check_key: bytes  # HMAC key for check codes (the service's hash key)
    signer: Signer


# ---------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Posting:
    """A payment posted: the journal entry and, for a premium, its receipt."""

    entry: JournalEntryPosted
    receipt: ReceiptIssued | None


def _rejection(payment: PaymentDetails, account_id: str, balance: int) -> PostingRejected:
    what = "wallet" if account_id.startswith("wallet:") else "personal medical account"
    other = "pay by bank card" if what != "wallet" else "top up the wallet or pay by bank card"
    return PostingRejected(
        payment_id=payment.payment_id,
        payer_id=payment.payer_id,
        decline_code="insufficient_funds",
        account_id=account_id,
        balance=balance,
        amount=payment.amount,
        message=(
            f"{what} balance {format_cny(balance)} CNY is less than the "
            f"{format_cny(payment.amount)} CNY to pay; {other}"
        ),
    )


def decide_posting(
    balances: Mapping[str, int],
    head: LedgerHead,
    payment: PaymentDetails,
    *,
    now: datetime,
    keys: PostingKeys,
    policy: ReceiptPolicy | None = None,
) -> Posting | PostingRejected:
    """Post ``payment`` after ``head``, or reject it when the source cannot cover it.

    ``balances`` needs at least the payment's source account (missing means 0).
    """
    policy = policy or ReceiptPolicy()
    source, destination = source_account(payment), destination_account(payment)
    balance = balances.get(source, 0)
    if must_stay_non_negative(source) and balance < payment.amount:
        return _rejection(payment, source, balance)

    posted_at = now.astimezone(UTC)
    receipt_ref: ReceiptRef | None = None
    face: dict[str, Any] | None = None
    if payment.purpose.type == "premium":
        code = receipt_code(payment.purpose.region, posted_at, policy)
        number = receipt_number(head.next_receipt_number(code))
        check = check_code(keys.check_key, code, number, payment.payment_id, payment.amount)
        receipt_ref = ReceiptRef(code=code, number=number, check_code=check)
        face = receipt_face(
            payment, code=code, number=number, check=check, posted_at=posted_at, policy=policy
        )

    unsealed = JournalEntryPosted(
        seq=head.seq + 1,
        transaction_id=transaction_id(payment.payment_id),
        payment_id=payment.payment_id,
        payer_id=payment.payer_id,
        kind=payment.purpose.type,
        lines=posting_lines(source, destination, payment.amount),
        currency=payment.currency,
        posted_at=posted_at,
        receipt=receipt_ref,
        prev_hash=head.hash,
        hash="",
    )
    entry = unsealed.model_copy(update={"hash": hash_of(unsealed)})
    receipt = None
    if face is not None:
        receipt = ReceiptIssued(
            payment_id=payment.payment_id,
            payer_id=payment.payer_id,
            journal_seq=entry.seq,
            receipt=face,
            signature=sign_face(face, keys.signer),
            key_id=keys.signer.key_id,
            payer_phone_sealed=payment.payer_phone_sealed,
        )
    return Posting(entry=entry, receipt=receipt)


def accounts_involved(payment: PaymentDetails) -> tuple[str, str]:
    """The accounts whose balances a decision about ``payment`` reads."""
    return source_account(payment), destination_account(payment)
