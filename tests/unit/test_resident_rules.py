"""The resident's pure rules (issue 12): a payment's record from the journal, the
three-year window, filters, pages, periods, years insured and this year's coverage."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from services.ledger.domain.chain import LedgerHead
from services.ledger.domain.posting import Posting, PostingKeys, decide_posting
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.domain.residents import (
    PaymentRecord,
    RecordFilter,
    Refund,
    coverage,
    page,
    period_bounds,
    record_of,
    window_start,
    years_insured,
)
from services.ledger.signing import ReceiptSigner
from shared.errors import ValidationFailed
from shared.events import (
    BeneficiaryRef,
    PayerEnrolled,
    PaymentDetails,
    Purpose,
    ReceiptIssued,
    decode,
    encode,
    new_event,
)

KEYS = PostingKeys(check_key=b"k" * 32, signer=ReceiptSigner(b"s" * 32))
NOW = datetime(2027, 11, 23, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai


def details(
    purpose: str = "premium", *, scheme: str = "urban_rural_resident", period: str = "2027"
) -> PaymentDetails:
    premium = purpose == "premium"
    return PaymentDetails(
        payment_id=f"pay_{uuid.uuid4().hex[:12]}",
        payer_id="u-1",
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        beneficiary=BeneficiaryRef(
            id_number_masked="110105********002X",
            id_number_hash="h" * 64,
            name="张三",
            relation="self",
        ),
        purpose=Purpose(
            type=purpose,  # type: ignore[arg-type]
            scheme=scheme if premium else None,  # type: ignore[arg-type]
            region="110000",
            period=period if premium else None,
        ),
        amount=79_500,
        method="bank_card",
        payee_id="bureau:110000" if premium else "wallet:u-1",
        payee_name="北京市医疗保障局" if premium else "零钱",
        requested_at=NOW,
        caller_id="caller_x",
    )


def posted(payment: PaymentDetails) -> Posting:
    out = decide_posting(
        {}, LedgerHead(), payment, now=NOW, keys=KEYS, policy=ReceiptPolicy(), bank_reference="bk"
    )
    assert isinstance(out, Posting)
    return out


def test_a_premiums_record_comes_from_its_entry_and_receipt_event() -> None:
    p = details()
    out = posted(p)
    r = record_of(out.entry, out.receipt)
    assert (r.kind, r.amount, r.payee_id, r.payee) == (
        "premium",
        79_500,
        "bureau:110000",
        "北京市医疗保障局",
    )
    assert (r.scheme, r.region, r.period) == ("urban_rural_resident", "110000", "2027")
    assert r.item == "城乡居民基本医疗保险费 2027"
    assert r.insured_id_hash == "h" * 64 and r.caller_id == "caller_x"
    assert r.receipt is not None and r.status == "paid" and r.method == "bank_card"
    assert r.day == date(2027, 11, 23)
    # A receipt event from before issue 12 (no purpose, no hash): read off the face.
    assert out.receipt is not None
    old = out.receipt.model_copy(update={"purpose": None, "insured_id_hash": None})
    r_old = record_of(out.entry, old)
    assert (r_old.scheme, r_old.region, r_old.period) == ("urban_rural_resident", "110000", "2027")


def test_a_topups_record_names_the_wallet() -> None:
    out = posted(details("wallet_topup"))
    r = record_of(out.entry, out.receipt)
    assert out.receipt is None
    assert (r.kind, r.item, r.payee, r.payee_id, r.receipt) == (
        "wallet_topup",
        "零钱充值",
        "零钱",
        "wallet:u-1",
        None,
    )
    assert r.scheme is None and r.period is None


def record(
    *,
    seq: int = 1,
    kind: str = "premium",
    scheme: str | None = "urban_rural_resident",
    region: str | None = "110000",
    period: str | None = "2027",
    posted_at: datetime = NOW,
    amount: int = 79_500,
    refunded: int = 0,
    payee_id: str = "bureau:110000",
) -> PaymentRecord:
    refunds = (Refund("re_1", refunded, posted_at, seq + 100, None, None),) if refunded else ()
    return PaymentRecord(
        payment_id=f"pay_{seq}",
        journal_seq=seq,
        posted_at=posted_at,
        kind=kind,
        payer_id="u-1",
        amount=amount,
        currency="CNY",
        method="bank_card",
        payee_id=payee_id,
        payee="北京市医疗保障局",
        item="x",
        scheme=scheme,
        region=region,
        period=period,
        receipt=None,
        insured_id_hash=None,
        insured_name=None,
        insured_id_number_masked=None,
        relation=None,
        caller_id=None,
        bank_reference=None,
        refunds=refunds,
    )


@pytest.mark.parametrize(
    ("refunded", "status"),
    [(0, "paid"), (1, "partially_refunded"), (79_499, "partially_refunded"), (79_500, "refunded")],
)
def test_status_follows_the_refunds(refunded: int, status: str) -> None:
    assert record(refunded=refunded).status == status


def test_the_window_is_three_years_of_shanghai_days() -> None:
    start = window_start(NOW)
    assert start.isoformat() == "2024-11-23T00:00:00+08:00"
    # 29 February three years on: the 28th.
    assert window_start(datetime(2028, 2, 29, 4, tzinfo=UTC)).date() == date(2025, 2, 28)
    # Late evening UTC is already the next day in Shanghai.
    assert window_start(datetime(2027, 11, 23, 17, tzinfo=UTC)).date() == date(2024, 11, 24)


def test_filters_by_year_payee_and_item() -> None:
    last_year = NOW - timedelta(days=365)
    topup = record(seq=2, kind="wallet_topup", scheme=None, payee_id="wallet:u-1")
    flexible = record(
        seq=3, scheme="flexible_employment", period="2027-03", payee_id="bureau:310000"
    )
    old = record(seq=4, posted_at=last_year)
    everything = [record(seq=1), topup, flexible, old]

    def ids(f: RecordFilter) -> list[int]:
        return [r.journal_seq for r in everything if f.check(NOW).matches(r)]

    assert ids(RecordFilter()) == [1, 2, 3, 4]
    assert ids(RecordFilter(year=2026)) == [4]
    assert ids(RecordFilter(payee="bureau:310000")) == [3]
    assert ids(RecordFilter(item="premium")) == [1, 3, 4]
    assert ids(RecordFilter(item="wallet_topup")) == [2]
    assert ids(RecordFilter(item="flexible_employment")) == [3]
    assert ids(RecordFilter(year=2027, item="urban_rural_resident")) == [1]
    with pytest.raises(ValidationFailed) as year:
        RecordFilter(year=2023).check(NOW)
    assert year.value.param == "year"
    with pytest.raises(ValidationFailed) as item:
        RecordFilter(item="lottery").check(NOW)
    assert item.value.param == "item"


def test_pages_follow_the_cursor() -> None:
    records = [record(seq=n) for n in (5, 4, 3, 2, 1)]
    first, more = page(records, starting_after=None, limit=2)
    assert [r.journal_seq for r in first] == [5, 4] and more
    second, more = page(records, starting_after="pay_4", limit=2)
    assert [r.journal_seq for r in second] == [3, 2] and more
    last, more = page(records, starting_after="pay_2", limit=2)
    assert [r.journal_seq for r in last] == [1] and not more
    exact, more = page(records, starting_after="pay_3", limit=2)
    assert [r.journal_seq for r in exact] == [2, 1] and not more
    with pytest.raises(ValidationFailed) as bad:
        page(records, starting_after="pay_9", limit=2)
    assert bad.value.param == "starting_after"


@pytest.mark.parametrize(
    ("period", "bounds"),
    [
        ("2027", (date(2027, 1, 1), date(2027, 12, 31))),
        ("2028-02", (date(2028, 2, 1), date(2028, 2, 29))),
        ("2027-Q4", (date(2027, 10, 1), date(2027, 12, 31))),
        ("2027-Q1", (date(2027, 1, 1), date(2027, 3, 31))),
    ],
)
def test_period_bounds(period: str, bounds: tuple[date, date]) -> None:
    assert period_bounds(period) == bounds


def test_years_insured_count_premiums_in_force_by_period_year() -> None:
    records = [
        record(seq=1, period="2025"),
        record(seq=2, period="2026"),
        record(seq=3, period="2026"),  # the same year twice: once
        record(seq=4, period="2027", refunded=79_500),  # fully refunded: not insured
        record(seq=5, period="2027", refunded=100),  # partly refunded: still in force
        record(seq=6, scheme="flexible_employment", period="2027-03"),
        record(seq=7, kind="wallet_topup", scheme=None, period=None),
    ]
    assert years_insured(records) == {
        "flexible_employment": [2027],
        "urban_rural_resident": [2025, 2026, 2027],
    }
    assert years_insured([record(seq=1, refunded=79_500)]) == {}


def test_coverage_of_the_current_year_per_scheme_and_region() -> None:
    today = date(2027, 11, 23)
    records = [
        record(seq=1, period="2027"),
        record(seq=2, region="310000", period="2027", refunded=79_500),
        record(seq=3, scheme="flexible_employment", period="2027-03"),
        record(seq=4, scheme="flexible_employment", period="2027-Q4"),
        record(seq=5, scheme="commercial_health", period="2026"),
    ]
    got = {(c.scheme, c.region): c for c in coverage(records, 2027, today)}
    assert set(got) == {("urban_rural_resident", "110000"), ("flexible_employment", "110000")}
    resident = got[("urban_rural_resident", "110000")]
    assert resident.insured and resident.periods == ("2027",)
    assert (resident.valid_from, resident.valid_to) == (date(2027, 1, 1), date(2027, 12, 31))
    flexible = got[("flexible_employment", "110000")]
    assert flexible.insured and flexible.periods == ("2027-03", "2027-Q4")
    assert (flexible.valid_from, flexible.valid_to) == (date(2027, 3, 1), date(2027, 12, 31))
    # Only March paid: not insured in November.
    march = coverage([record(scheme="flexible_employment", period="2027-03")], 2027, today)
    assert not march[0].insured
    # Another year asked for (a certificate of 2026): any paid period counts.
    assert coverage(records, 2026, today)[0].insured
    assert replace(resident, insured=False) != resident


def test_payer_enrolled_and_older_receipt_events_decode() -> None:
    enrolled = new_event(
        PayerEnrolled(payer_id="u-1", caller_id="caller_x", id_number_hash=None, enrolled_at=NOW),
        producer="payment",
        key="u-1",
        correlation_id=None,
    )
    decoded = decode(encode(enrolled)).payload
    assert isinstance(decoded, PayerEnrolled) and decoded.caller_id == "caller_x"
    # A ReceiptIssued from before issue 12 (no insured hash, no purpose) still decodes.
    out = posted(details())
    assert out.receipt is not None
    old = out.receipt.model_dump(mode="json")
    del old["insured_id_hash"], old["purpose"]
    again = ReceiptIssued.model_validate(old)
    assert again.insured_id_hash is None and again.purpose is None
    assert again.receipt == out.receipt.receipt  # the signed face is untouched
