"""The development bank's rules: what a debit, refund or transfer books, and when.

Pure functions over plain data (no SQLite, no HTTP): the clearing day of a booking,
the answer to a refund given its debit, the conflict of a reused reference, and the
statement file of a day.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal

from shared.errors import Conflict, ValidationFailed
from shared.money import SHANGHAI, format_cny

Kind = Literal["debit", "refund", "transfer"]
Status = Literal["succeeded", "declined", "pending"]

DECLINED_BY_BANK = "declined_by_bank"
UNKNOWN_DEBIT = "unknown_debit"
DEBIT_NOT_SUCCEEDED = "debit_not_succeeded"
EXCEEDS_DEBIT = "exceeds_debit"

STATEMENT_COLUMNS = (
    "reference",
    "kind",
    "amount",
    "currency",
    "booked_at",
    "related_reference",
    "account",
)

_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CUTOFF_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")


@dataclass(frozen=True)
class Operation:
    """One booking as the bank keeps it; ``account`` is the payer's reference for a
    debit and a refund, the receiving account for a transfer."""

    kind: Kind
    reference: str
    amount_fen: int
    currency: str
    status: Status
    reason: str | None
    booked_at: datetime
    clearing_day: date
    related_reference: str | None = None
    account: str | None = None


@dataclass(frozen=True)
class Debit:
    reference: str
    amount_fen: int
    currency: str
    payer_ref: str


@dataclass(frozen=True)
class Refund:
    reference: str
    debit_reference: str
    amount_fen: int


@dataclass(frozen=True)
class Transfer:
    reference: str
    to_account: str
    amount_fen: int


Request = Debit | Refund | Transfer


class ReferenceReused(Conflict):
    """A reference already answered for a different request."""

    code = "reference_reused"


# ------------------------------------------------------------------ clearing day


def parse_cutoff(text: str) -> time:
    """``"23:00"`` -> 23:00. ``"00:00"`` means midnight: the natural day."""
    match = _CUTOFF_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"cut-off {text!r} is not HH:MM (00:00-23:59); e.g. 23:00")
    return time(int(match.group(1)), int(match.group(2)))


def clearing_day(booked_at: datetime, cutoff: time) -> date:
    """The clearing day of a booking: its Asia/Shanghai date, or the next day when it
    was booked at or after the cut-off."""
    if booked_at.tzinfo is None:
        raise ValueError("naive datetime: the bank keeps every time in UTC with tzinfo")
    local = booked_at.astimezone(SHANGHAI)
    late = cutoff != time(0) and local.time() >= cutoff
    return local.date() + timedelta(days=1) if late else local.date()


def parse_day(text: str) -> date:
    """A clearing day as written in URLs, ``YYYY-MM-DD``."""
    day = None
    if _DAY_RE.fullmatch(text):
        with contextlib.suppress(ValueError):
            day = date.fromisoformat(text)
    if day is None:
        raise ValidationFailed(
            f"day {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2027-01-31",
            param="day",
        )
    return day


# ------------------------------------------------------------------ bookings


def book_debit(debit: Debit, *, declined: bool, now: datetime, cutoff: time) -> Operation:
    """A debit succeeds unless the bank was told to decline it."""
    return Operation(
        kind="debit",
        reference=debit.reference,
        amount_fen=debit.amount_fen,
        currency=debit.currency,
        status="declined" if declined else "succeeded",
        reason=DECLINED_BY_BANK if declined else None,
        booked_at=now,
        clearing_day=clearing_day(now, cutoff),
        account=debit.payer_ref,
    )


def refund_refusal(refund: Refund, debit: Operation | None, refunded_fen: int) -> str | None:
    """Why the bank declines ``refund``, or None: it needs a succeeded debit with at
    least the refund's amount not yet refunded."""
    if debit is None:
        return UNKNOWN_DEBIT
    if debit.status != "succeeded":
        return DEBIT_NOT_SUCCEEDED
    if refund.amount_fen > debit.amount_fen - refunded_fen:
        return EXCEEDS_DEBIT
    return None


def book_refund(
    refund: Refund, debit: Operation | None, refunded_fen: int, *, now: datetime, cutoff: time
) -> Operation:
    reason = refund_refusal(refund, debit, refunded_fen)
    return Operation(
        kind="refund",
        reference=refund.reference,
        amount_fen=refund.amount_fen,
        currency=debit.currency if debit is not None else "CNY",
        status="declined" if reason else "succeeded",
        reason=reason,
        booked_at=now,
        clearing_day=clearing_day(now, cutoff),
        related_reference=refund.debit_reference,
        account=debit.account if debit is not None else None,
    )


def book_transfer(transfer: Transfer, *, now: datetime, cutoff: time) -> Operation:
    return Operation(
        kind="transfer",
        reference=transfer.reference,
        amount_fen=transfer.amount_fen,
        currency="CNY",
        status="succeeded",
        reason=None,
        booked_at=now,
        clearing_day=clearing_day(now, cutoff),
        account=transfer.to_account,
    )


def check_same_request(stored: Operation, request: Request) -> None:
    """A repeated reference must repeat its request; otherwise ReferenceReused (409)
    naming the first field that differs."""
    if isinstance(request, Debit):
        fields = [
            ("amount", stored.amount_fen, request.amount_fen),
            ("currency", stored.currency, request.currency),
            ("payer_ref", stored.account, request.payer_ref),
        ]
    elif isinstance(request, Refund):
        fields = [
            ("amount", stored.amount_fen, request.amount_fen),
            ("debit_reference", stored.related_reference, request.debit_reference),
        ]
    else:
        fields = [
            ("amount", stored.amount_fen, request.amount_fen),
            ("to_account", stored.account, request.to_account),
        ]
    for param, before, now in fields:
        if before != now:
            raise ReferenceReused(
                f"reference {stored.reference!r} was used for a {stored.kind} of "
                f"{format_cny(stored.amount_fen)} CNY with another {param}; repeat the "
                f"first request exactly, or use a new reference for a new {stored.kind}",
                param=param,
            )


# ------------------------------------------------------------------ statement


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: ``2027-01-31T14:59:59.000001Z``."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def statement_csv(operations: Iterable[Operation]) -> str:
    """The bank's record of a clearing day: one line per succeeded booking."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_COLUMNS)
    for op in operations:
        if op.status != "succeeded":
            continue
        writer.writerow(
            (
                op.reference,
                op.kind,
                op.amount_fen,
                op.currency,
                rfc3339(op.booked_at),
                op.related_reference or "",
                op.account or "",
            )
        )
    return out.getvalue()
