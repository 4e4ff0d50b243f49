"""The development bank's pure rules: clearing day and cut-off, refunds, reused
references, the statement file."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.devbank import domain
from services.devbank.domain import Debit, Refund, Transfer
from shared.errors import ValidationFailed
from shared.money import SHANGHAI

CUTOFF = time(23, 0)


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize(
    ("shanghai", "day"),
    [
        ("2027-01-31T00:00:00+08:00", "2027-01-31"),
        ("2027-01-31T22:59:59.999999+08:00", "2027-01-31"),
        ("2027-01-31T23:00:00+08:00", "2027-02-01"),  # at the cut-off: the next day
        ("2027-01-31T23:59:59+08:00", "2027-02-01"),
        ("2027-02-28T23:30:00+08:00", "2027-03-01"),
        ("2027-12-31T23:00:00+08:00", "2028-01-01"),
        # 15:00 UTC is 23:00 in Shanghai
        ("2027-01-31T14:59:59+00:00", "2027-01-31"),
        ("2027-01-31T15:00:00+00:00", "2027-02-01"),
    ],
)
def test_clearing_day_has_a_cut_off(shanghai: str, day: str) -> None:
    assert domain.clearing_day(_utc(shanghai), CUTOFF) == date.fromisoformat(day)


def test_midnight_cut_off_is_the_natural_day() -> None:
    at = _utc("2027-01-31T00:00:00+08:00")
    assert domain.clearing_day(at, time(0)) == date(2027, 1, 31)
    assert domain.clearing_day(_utc("2027-01-31T23:59:00+08:00"), time(0)) == date(2027, 1, 31)


@given(st.datetimes(timezones=st.just(UTC)), st.times())
def test_clearing_day_is_the_shanghai_day_or_the_next(moment: datetime, cutoff: time) -> None:
    local = moment.astimezone(SHANGHAI).date()
    assert (domain.clearing_day(moment, cutoff) - local).days in (0, 1)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        domain.clearing_day(datetime(2027, 1, 31, 12), CUTOFF)  # noqa: DTZ001


@pytest.mark.parametrize(
    ("text", "cutoff"), [("23:00", time(23)), ("00:00", time(0)), (" 18:30 ", time(18, 30))]
)
def test_parse_cutoff(text: str, cutoff: time) -> None:
    assert domain.parse_cutoff(text) == cutoff


@pytest.mark.parametrize("text", ["24:00", "23", "23:60", "9:00", "23:00:00", ""])
def test_bad_cutoff(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        domain.parse_cutoff(text)


@pytest.mark.parametrize(
    "text", ["2027-02-30", "20270131", "2027-1-31", "yesterday", "2027-01-31x", "٢٠٢٧-01-31"]
)
def test_bad_day_names_the_day(text: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        domain.parse_day(text)
    assert caught.value.param == "day"
    assert caught.value.status == 400


NOW = _utc("2027-01-31T10:00:00+08:00")


def _debit(amount: int = 10_000, declined: bool = False) -> domain.Operation:
    return domain.book_debit(
        Debit("d-1", amount, "CNY", "u-1"), declined=declined, now=NOW, cutoff=CUTOFF
    )


def test_debit_succeeds_or_is_declined_by_the_bank() -> None:
    ok, no = _debit(), _debit(declined=True)
    assert (ok.status, ok.reason, ok.account) == ("succeeded", None, "u-1")
    assert (no.status, no.reason) == ("declined", "declined_by_bank")
    assert ok.clearing_day == date(2027, 1, 31)


@pytest.mark.parametrize(
    ("debit", "refunded", "amount", "reason"),
    [
        (None, 0, 100, "unknown_debit"),
        ("declined", 0, 100, "debit_not_succeeded"),
        ("succeeded", 0, 10_001, "exceeds_debit"),
        ("succeeded", 6_000, 4_001, "exceeds_debit"),
        ("succeeded", 6_000, 4_000, None),
        ("succeeded", 0, 10_000, None),
    ],
)
def test_refund_needs_a_succeeded_debit_with_enough_left(
    debit: str | None, refunded: int, amount: int, reason: str | None
) -> None:
    original = None if debit is None else _debit(declined=debit == "declined")
    op = domain.book_refund(
        Refund("r-1", "d-1", amount), original, refunded, now=NOW, cutoff=CUTOFF
    )
    assert op.reason == reason
    assert op.status == ("succeeded" if reason is None else "declined")
    assert op.related_reference == "d-1"


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (Debit("d-1", 10_000, "CNY", "u-1"), None),
        (Debit("d-1", 10_001, "CNY", "u-1"), "amount"),
        (Debit("d-1", 10_000, "CNY", "u-2"), "payer_ref"),
    ],
)
def test_a_reused_reference_must_repeat_its_request(
    request_: domain.Request, param: str | None
) -> None:
    if param is None:
        domain.check_same_request(_debit(), request_)
        return
    with pytest.raises(domain.ReferenceReused) as caught:
        domain.check_same_request(_debit(), request_)
    assert (caught.value.status, caught.value.param) == (409, param)
    assert "new reference" in caught.value.message


def test_a_reused_transfer_or_refund_reference_names_the_field() -> None:
    transfer = domain.book_transfer(Transfer("t-1", "bureau:110000", 500), now=NOW, cutoff=CUTOFF)
    with pytest.raises(domain.ReferenceReused) as caught:
        domain.check_same_request(transfer, Transfer("t-1", "bureau:310000", 500))
    assert caught.value.param == "to_account"
    refund = domain.book_refund(Refund("r-1", "d-1", 5), _debit(), 0, now=NOW, cutoff=CUTOFF)
    with pytest.raises(domain.ReferenceReused) as caught:
        domain.check_same_request(refund, Refund("r-1", "d-2", 5))
    assert caught.value.param == "debit_reference"


def test_statement_lists_only_succeeded_bookings() -> None:
    debit = _debit()
    declined = domain.book_debit(
        Debit("d-2", 300, "CNY", "u-2"), declined=True, now=NOW, cutoff=CUTOFF
    )
    refund = domain.book_refund(Refund("r-1", "d-1", 2_500), debit, 0, now=NOW, cutoff=CUTOFF)
    transfer = domain.book_transfer(Transfer("t-1", "bureau:110000", 7_500), now=NOW, cutoff=CUTOFF)
    text = domain.statement_csv([debit, declined, refund, transfer])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert (
        text.splitlines()[0] == "reference,kind,amount,currency,booked_at,related_reference,account"
    )
    assert [(r["reference"], r["kind"], r["amount"]) for r in rows] == [
        ("d-1", "debit", "10000"),
        ("r-1", "refund", "2500"),
        ("t-1", "transfer", "7500"),
    ]
    assert rows[1]["related_reference"] == "d-1"
    assert rows[2]["account"] == "bureau:110000"
    assert {r["booked_at"] for r in rows} == {"2027-01-31T02:00:00.000000Z"}
    assert domain.statement_csv([]) == ",".join(domain.STATEMENT_COLUMNS) + "\n"
