"""The chart of accounts and the lines of each kind of journal entry.

Balances are signed fen; a positive line enters an account.

- ``wallet:{payer_id}``              the payer's wallet (零钱); never negative
- ``medical:{payer_id}``             the payer's personal medical account (个人账户); never negative
- ``bank:funding``                   money from outside (bank cards); goes negative as money enters
- ``clearing:platform``              platform clearing; every entry nets it to zero
- ``bureau:{region}:premium``        premiums received by a region's bureau (医保局)
- ``bureau:{region}:medical_fund``   the bureau's fund that credits personal medical accounts
                                     (个账划入); goes negative: it is the bureau's outflow

Beside them, a memo ledger of where a region's premium cash is (lines that balance
among themselves in every entry, so every entry still sums to zero):

- ``cash:{region}:collected``        contra: minus the premiums collected, net of refunds
- ``cash:{region}:platform``         held by the platform, not yet settled
- ``cash:{region}:transit:{bank}``   instructed to the bank, not yet confirmed
- ``cash:{region}:bureau``           arrived at the bureau's bank account

A premium entry adds (+platform, -collected), its refund the reverse; a closed day's
``settlement`` entry moves the region's net platform → transit, and the bank's
confirmation (``settlement_arrival``) transit → bureau.
"""

from __future__ import annotations

import re

from shared.errors import DomainError
from shared.events import JournalEntryPosted, JournalLine, PaymentDetails, PaymentMethod

BANK_FUNDING = "bank:funding"
CLEARING = "clearing:platform"
NON_NEGATIVE_PREFIXES = ("wallet:", "medical:")
CASH_PREFIX = "cash:"  # the memo ledger of where premium cash is (module docstring)

_PAYER_ID = r"[A-Za-z0-9][A-Za-z0-9_.@\-]{0,127}"
_BANK = r"[a-z0-9][a-z0-9_\-]{0,31}"
ACCOUNT_ID_RE = re.compile(
    rf"^(?:wallet:{_PAYER_ID}|medical:{_PAYER_ID}|bureau:[0-9]{{6}}:(?:premium|medical_fund)"
    rf"|cash:[0-9]{{6}}:(?:collected|platform|bureau|transit:{_BANK})"
    rf"|{re.escape(BANK_FUNDING)}|{re.escape(CLEARING)})$"
)
BANK_NAME_RE = re.compile(rf"^{_BANK}$")
_PREMIUM_RE = re.compile(r"^bureau:([0-9]{6}):premium$")


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


def cash_collected(region: str) -> str:
    return f"cash:{region}:collected"


def cash_platform(region: str) -> str:
    return f"cash:{region}:platform"


def cash_transit(region: str, bank: str) -> str:
    return f"cash:{region}:transit:{bank}"


def cash_bureau(region: str) -> str:
    return f"cash:{region}:bureau"


def is_memo(account_id: str) -> bool:
    return account_id.startswith(CASH_PREFIX)


def money_lines(entry: JournalEntryPosted) -> tuple[JournalLine, ...]:
    """The entry's lines without the cash memo lines."""
    return tuple(x for x in entry.lines if not is_memo(x.account_id))


def premium_memo_lines(region: str, amount: int) -> tuple[JournalLine, ...]:
    """A premium of ``amount`` collected for ``region`` (negative: refunded)."""
    return (
        JournalLine(account_id=cash_platform(region), amount=amount),
        JournalLine(account_id=cash_collected(region), amount=-amount),
    )


def settlement_lines(region: str, bank: str, amount: int) -> tuple[JournalLine, ...]:
    """A closed day's net, instructed to the bank: platform → transit."""
    return (
        JournalLine(account_id=cash_platform(region), amount=-amount),
        JournalLine(account_id=cash_transit(region, bank), amount=amount),
    )


def arrival_lines(region: str, bank: str, amount: int) -> tuple[JournalLine, ...]:
    """The bank confirmed the transfer: transit → the bureau's account."""
    return (
        JournalLine(account_id=cash_transit(region, bank), amount=-amount),
        JournalLine(account_id=cash_bureau(region), amount=amount),
    )


def premium_region(entry: JournalEntryPosted) -> tuple[str, int] | None:
    """(region, signed amount) of a premium (positive) or a premium's refund
    (negative): the ``bureau:{region}:premium`` line; None for any other entry."""
    if entry.kind not in ("premium", "refund"):
        return None
    for line in entry.lines:
        found = _PREMIUM_RE.match(line.account_id)
        if found is not None and line.amount != 0:
            return found.group(1), line.amount
    return None


def method_of(entry: JournalEntryPosted) -> str:
    """How a payment (or, for a refund, its payment) was paid, from its source line."""
    lines = money_lines(entry)
    account = (lines[-1] if entry.kind == "refund" else lines[0]).account_id
    if account == BANK_FUNDING:
        return "bank_card"
    if account.startswith("wallet:"):
        return "wallet"
    if account.startswith("medical:"):
        return "medical_account"
    return ""


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
    the last money line enters the destination (``posting_lines``; memo lines aside)."""
    lines = money_lines(original)
    return lines[0].account_id, lines[-1].account_id


def refund_lines(
    original: JournalEntryPosted, amount: int, *, memo: bool = False
) -> tuple[JournalLine, ...]:
    """``amount`` back the way the original came: destination → clearing → source;
    with ``memo``, a premium's refund also takes the cash back out of the platform."""
    source, destination = payment_route(original)
    lines = posting_lines(destination, source, amount)
    found = _PREMIUM_RE.match(destination)
    if memo and found is not None:
        lines += premium_memo_lines(found.group(1), -amount)
    return lines


def allocation_lines(region: str, payer_id: str, amount: int) -> tuple[JournalLine, ...]:
    """The bureau's fund credits the personal medical account (个账划入)."""
    return (
        JournalLine(account_id=bureau_medical_fund(region), amount=-amount),
        JournalLine(account_id=medical(payer_id), amount=amount),
    )


def transaction_amount(entry: JournalEntryPosted) -> int:
    """What a transaction moved: the money entering accounts other than clearing (the
    cash memo lines aside; a settlement entry moves only memo lines: their amount)."""
    if entry.kind in ("settlement", "settlement_arrival"):
        return sum(x.amount for x in entry.lines if x.amount > 0)
    return sum(
        x.amount
        for x in entry.lines
        if x.amount > 0 and x.account_id != CLEARING and not is_memo(x.account_id)
    )
