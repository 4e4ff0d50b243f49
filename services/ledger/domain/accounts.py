"""The chart of accounts and the lines of each kind of journal entry.

Balances are signed fen; a positive line enters an account.

- ``wallet:{payer_id}``              the payer's wallet (零钱); never negative
- ``medical:{payer_id}``             the payer's personal medical account (个人账户); never negative
- ``bank:funding``                   money from outside (bank cards); goes negative as money enters
- ``clearing:platform``              platform clearing; every entry nets it to zero
- ``bureau:{region}:premium``        premiums received by a region's bureau (医保局)
- ``bureau:{region}:medical_fund``   the bureau's fund that credits personal medical accounts
                                     (个账划入); goes negative: it is the bureau's outflow
"""

from __future__ import annotations

import re

from shared.errors import DomainError
from shared.events import JournalEntryPosted, JournalLine, PaymentDetails, PaymentMethod

BANK_FUNDING = "bank:funding"
CLEARING = "clearing:platform"
NON_NEGATIVE_PREFIXES = ("wallet:", "medical:")

_PAYER_ID = r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}"
ACCOUNT_ID_RE = re.compile(
    rf"^(?:wallet:{_PAYER_ID}|medical:{_PAYER_ID}|bureau:\d{{6}}:(?:premium|medical_fund)"
    rf"|{re.escape(BANK_FUNDING)}|{re.escape(CLEARING)})$"
)


class InvalidPosting(DomainError):
    """An event the chart of accounts cannot book (an upstream bug): the consumer
    dead-letters it with this message."""

    code = "invalid_posting"


def wallet(payer_id: str) -> str:
    return f"wallet:{payer_id}"


def medical(payer_id: str) -> str:
    return f"medical:{payer_id}"


def bureau_premium(region: str) -> str:
    return f"bureau:{region}:premium"


def bureau_medical_fund(region: str) -> str:
    return f"bureau:{region}:medical_fund"


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


def payment_route(original: JournalEntryPosted) -> tuple[str, str]:
    """(source, destination) of a posted payment: the first line leaves the source,
    the last enters the destination (``posting_lines``)."""
    return original.lines[0].account_id, original.lines[-1].account_id


def refund_lines(original: JournalEntryPosted, amount: int) -> tuple[JournalLine, ...]:
    """``amount`` back the way the original came: destination → clearing → source."""
    source, destination = payment_route(original)
    return posting_lines(destination, source, amount)


def allocation_lines(region: str, payer_id: str, amount: int) -> tuple[JournalLine, ...]:
    """The bureau's fund credits the personal medical account (个账划入)."""
    return (
        JournalLine(account_id=bureau_medical_fund(region), amount=-amount),
        JournalLine(account_id=medical(payer_id), amount=amount),
    )


def transaction_amount(entry: JournalEntryPosted) -> int:
    """What a transaction moved: the money entering accounts other than clearing."""
    return sum(x.amount for x in entry.lines if x.amount > 0 and x.account_id != CLEARING)
