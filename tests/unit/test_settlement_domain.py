"""Settlement's pure rules: clearing days and the cut-off, netting with refunds and
carried deficits, the close's entries and checkpoint, the settlement file's bytes,
reconciliation matching, entry signatures."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ledger.domain.accounts import (
    cash_bureau,
    cash_collected,
    cash_platform,
    cash_transit,
    is_well_formed_account,
    transaction_amount,
)
from services.ledger.domain.chain import LedgerHead, hash_of
from services.ledger.domain.clearing import (
    clearing_day_of,
    cutoff_instant,
    entry_clearing_day,
    parse_cutoff,
    parse_day,
    posting_day,
)
from services.ledger.domain.posting import Posting, decide_posting, decide_refund_posting
from services.ledger.domain.projector import LedgerState, project
from services.ledger.domain.reconciliation import (
    LedgerRecord,
    earlier_unbooked_debits,
    parse_statement,
    reconcile,
)
from services.ledger.domain.settlement import (
    DayLine,
    Transfer,
    arrival_entry,
    day_lines,
    decide_close_day,
    net_regions,
)
from services.ledger.domain.settlement_file import COLUMNS, FileLine, settlement_file
from services.ledger.signing import checkpoint_verifies, entry_signature_verifies
from services.payment.handlers import NOT_A_PAYMENT, PaymentHandlers
from shared.errors import ValidationFailed
from shared.events import Event, JournalEntryPosted, RegionSettlement, decode_payload
from shared.topics import TopicNames
from tests.unit.test_ledger_domain import KEYS, SIGNER, payment
from tests.unit.test_ledger_refunds import POLICY, context, refund_of

CUT = time(23, 0)
DAY = date(2026, 11, 26)


def shanghai(hh: int, mm: int = 0, day: date = DAY) -> datetime:
    """``day`` at hh:mm Asia/Shanghai, as UTC."""
    return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC) - timedelta(hours=8)


# ---------------------------------------------------------------------------
# Clearing days
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "cutoff", "day"),
    [
        (shanghai(0, 0), CUT, DAY),
        (shanghai(22, 59), CUT, DAY),
        (shanghai(23, 0), CUT, DAY + timedelta(days=1)),
        (shanghai(23, 59), CUT, DAY + timedelta(days=1)),
        (shanghai(23, 59), time(0), DAY),
        (shanghai(17, 30), time(17, 30), DAY + timedelta(days=1)),
    ],
)
def test_clearing_day_with_cutoff(moment: datetime, cutoff: time, day: date) -> None:
    assert clearing_day_of(moment, cutoff) == day


def test_cutoff_instant_ends_the_day() -> None:
    assert cutoff_instant(DAY, CUT) == shanghai(23, 0)
    assert clearing_day_of(cutoff_instant(DAY, CUT) - timedelta(microseconds=1), CUT) == DAY
    assert cutoff_instant(DAY, time(0)) == shanghai(0, 0, DAY + timedelta(days=1))
    assert parse_cutoff("07:05") == time(7, 5)
    with pytest.raises(ValueError, match="HH:MM"):
        parse_cutoff("24:00")


def test_a_force_closed_day_sends_later_postings_to_the_next() -> None:
    morning = shanghai(10, 0)
    assert posting_day(morning, CUT, None) == DAY
    assert posting_day(morning, CUT, DAY - timedelta(days=1)) == DAY
    assert posting_day(morning, CUT, DAY) == DAY + timedelta(days=1)  # closed early
    assert posting_day(morning, CUT, DAY + timedelta(days=1)) == DAY + timedelta(days=2)
    # After the real cut-off the day would be tomorrow anyway.
    assert posting_day(shanghai(23, 30), CUT, DAY) == DAY + timedelta(days=1)


def test_entries_without_a_clearing_day_derive_it_from_posted_at() -> None:
    posted = decide_posting({}, LedgerHead(), payment(), now=shanghai(23, 10), keys=KEYS)
    assert isinstance(posted, Posting) and posted.entry.clearing_day is None
    assert entry_clearing_day(posted.entry) == DAY + timedelta(days=1)


@given(st.integers(min_value=0, max_value=15 * 365 * 86_400))
def test_each_moment_falls_inside_its_clearing_day(seconds: int) -> None:
    moment = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    day = clearing_day_of(moment, CUT)
    assert cutoff_instant(day - timedelta(days=1), CUT) <= moment < cutoff_instant(day, CUT)


# ---------------------------------------------------------------------------
# Entries: cash memo lines, signatures
# ---------------------------------------------------------------------------


def post(amount: int, region: str, *, method: str = "wallet", day: date = DAY) -> Posting:
    p = payment(amount=amount, region=region, method=method)
    balances = {f"wallet:{p.payer_id}": 10**9}
    posted = decide_posting(
        balances,
        LedgerHead(),
        p,
        now=shanghai(10),
        keys=KEYS,
        policy=POLICY,
        clearing_day=day,
        bank_reference="bk_x" if method == "bank_card" else None,
    )
    assert isinstance(posted, Posting)
    return posted


def test_a_premium_with_a_clearing_day_adds_the_cash_memo_pair_and_is_signed() -> None:
    entry = post(38_000, "310000").entry
    memo = [(x.account_id, x.amount) for x in entry.lines][4:]
    assert memo == [(cash_platform("310000"), 38_000), (cash_collected("310000"), -38_000)]
    assert sum(x.amount for x in entry.lines) == 0
    assert transaction_amount(entry) == 38_000  # memo lines are not money moved twice
    assert entry.clearing_day == DAY.isoformat() and entry.key_id == SIGNER.key_id
    assert hash_of(entry) == entry.hash and entry_signature_verifies(entry, SIGNER.public_raw)
    forged = entry.model_copy(update={"key_id": "0" * 16})
    assert hash_of(forged) != entry.hash  # key_id is hashed; the signature is not
    assert not entry_signature_verifies(
        entry.model_copy(update={"hash": "f" * 64}), SIGNER.public_raw
    )


def test_a_premium_refund_reverses_the_memo_pair() -> None:
    posted = post(38_000, "310000")
    p_refund = refund_of(_details(posted), 8_000)
    made = decide_refund_posting(
        p_refund,
        context(posted),
        now=shanghai(11),
        keys=KEYS,
        policy=POLICY,
        clearing_day=DAY,
    )
    assert isinstance(made, Posting)
    memo = [(x.account_id, x.amount) for x in made.entry.lines][4:]
    assert memo == [(cash_platform("310000"), -8_000), (cash_collected("310000"), 8_000)]
    assert transaction_amount(made.entry) == 8_000


def _details(posted: Posting) -> object:
    from shared.events import PaymentDetails

    face = posted.receipt.receipt if posted.receipt else {}
    return PaymentDetails.model_validate(
        payment(amount=posted.entry.lines[0].amount * -1).model_dump()
        | {"payment_id": posted.entry.payment_id, "payer_id": posted.entry.payer_id}
        | {"purpose": {"type": "premium", "region": face["payee_id"].split(":")[1]}}
        | {"method": "wallet"}
    )


def test_cash_accounts_are_well_formed() -> None:
    for account in (
        cash_collected("310000"),
        cash_platform("310000"),
        cash_transit("310000", "devbank"),
        cash_bureau("310000"),
    ):
        assert is_well_formed_account(account), account
    assert not is_well_formed_account("cash:310000:elsewhere")
    assert not is_well_formed_account("cash:31000:bureau")
    assert not is_well_formed_account("cash:３１００００:bureau")  # full-width
    assert not is_well_formed_account("bureau:٣١٠٠٠٠:premium")


@pytest.mark.parametrize("text", ["２３:00", "2٣:00", "23:٠٠"])
def test_a_cutoff_in_other_digits_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_cutoff(text)


@pytest.mark.parametrize("text", ["２０２７-01-31", "2027-0١-31"])
def test_a_day_in_other_digits_is_refused(text: str) -> None:
    with pytest.raises(ValidationFailed, match="YYYY-MM-DD"):
        parse_day(text)


# ---------------------------------------------------------------------------
# Netting
# ---------------------------------------------------------------------------


def line(region: str, amount: int, seq: int) -> DayLine:
    return DayLine(
        region=region,
        kind="payment" if amount > 0 else "refund",
        amount=amount,
        seq=seq,
        payment_id=f"pay_{seq}",
        refund_id=None if amount > 0 else f"re_{seq}",
        receipt=None,
        method="wallet",
        bank_reference=None,
        posted_at=shanghai(10),
    )


def test_netting_with_refunds_and_carried_deficits() -> None:
    lines = [line("310000", 100, 1), line("310000", -30, 2), line("440100", 10, 3)]
    lines.append(line("440100", -50, 4))
    shanghai_, guangzhou = net_regions(DAY, lines, {"310000": -5})
    assert (shanghai_.count, shanghai_.paid, shanghai_.refunded) == (2, 100, 30)
    assert (shanghai_.carried_in, shanghai_.net, shanghai_.transfer_amount) == (-5, 65, 65)
    assert shanghai_.transfer_reference == "st_2026-11-26_310000"
    assert shanghai_.carried_out == 0
    assert (guangzhou.net, guangzhou.transfer_amount, guangzhou.carried_out) == (-40, 0, -40)
    assert guangzhou.transfer_reference is None
    # The next day the deficit is a deduction.
    [later] = net_regions(DAY + timedelta(days=1), [line("440100", 100, 5)], {"440100": -40})
    assert (later.paid, later.carried_in, later.net, later.transfer_amount) == (100, -40, 60, 60)


def test_a_net_of_exactly_zero_transfers_nothing() -> None:
    [r] = net_regions(DAY, [line("310000", 50, 1), line("310000", -50, 2)], {})
    assert (r.net, r.transfer_amount, r.transfer_reference, r.carried_out) == (0, 0, None, 0)


@given(st.lists(st.integers(min_value=-10_000, max_value=10_000).filter(bool), max_size=30))
def test_netting_conserves_money(amounts: list[int]) -> None:
    lines = [line("310000", a, i + 1) for i, a in enumerate(amounts)]
    for r in net_regions(DAY, lines, {"310000": -7}):
        assert r.net == sum(amounts) - 7
        assert r.transfer_amount + r.carried_out == r.net
        assert r.transfer_amount >= 0 and r.carried_out <= 0


# ---------------------------------------------------------------------------
# Closing a day; the arrival
# ---------------------------------------------------------------------------


def journal_of(*postings: Posting) -> tuple[LedgerState, list[JournalEntryPosted]]:
    """Chain independent postings after one another (re-deciding on the head)."""
    state, entries = LedgerState(), []
    for posted in postings:
        p = payment(amount=posted.entry.lines[-3].amount, region="310000", method="wallet")
        again = decide_posting(
            {f"wallet:{p.payer_id}": 10**9},
            state.head,
            p,
            now=shanghai(10),
            keys=KEYS,
            policy=POLICY,
            clearing_day=DAY,
        )
        assert isinstance(again, Posting)
        state = project(state, again.entry)
        entries.append(again.entry)
    return state, entries


def test_closing_a_day_posts_settlement_entries_and_a_signed_checkpoint() -> None:
    state, entries = journal_of(post(38_000, "310000"), post(12_000, "310000"))
    closing = decide_close_day(
        state.head,
        DAY,
        entries,
        {},
        bank="devbank",
        closed_at=shanghai(23, 5),
        forced=False,
        signer=SIGNER,
    )
    [entry] = closing.entries
    assert entry.kind == "settlement" and entry.payment_id == "st_2026-11-26_310000"
    assert entry.seq == state.head.seq + 1 and entry.prev_hash == state.head.hash
    assert [(x.account_id, x.amount) for x in entry.lines] == [
        (cash_platform("310000"), -50_000),
        (cash_transit("310000", "devbank"), 50_000),
    ]
    assert entry_signature_verifies(entry, SIGNER.public_raw)
    cp = closing.closed.checkpoint
    assert (cp.seq, cp.hash) == (entry.seq, entry.hash) == (closing.head.seq, closing.head.hash)
    assert checkpoint_verifies(cp, SIGNER.public_raw)
    assert not checkpoint_verifies(cp.model_copy(update={"seq": cp.seq + 1}), SIGNER.public_raw)
    assert [e.event_type for e in closing.events] == ["JournalEntryPosted", "ClearingDayClosed"]
    again = decide_close_day(
        state.head,
        DAY,
        entries,
        {},
        bank="devbank",
        closed_at=shanghai(23, 5),
        forced=False,
        signer=SIGNER,
    )
    assert [e.event_id for e in again.events] == [e.event_id for e in closing.events]
    after = project(state, entry)
    assert after.balance(cash_platform("310000")) == 0
    assert after.balance(cash_transit("310000", "devbank")) == 50_000

    transfer = Transfer(entry.payment_id, DAY, "310000", "devbank", "bureau:310000", 50_000)
    arrival, envelope = arrival_entry(
        after.head,
        transfer,
        confirmed_at=shanghai(23, 6),
        posted_at=shanghai(23, 7),
        clearing_day=DAY + timedelta(days=1),
        signer=SIGNER,
    )
    assert arrival.kind == "settlement_arrival" and arrival.bank_reference == entry.payment_id
    assert arrival.bank_confirmed_at == shanghai(23, 6)
    assert envelope.event_id != closing.events[0].event_id
    done = project(after, arrival)
    assert done.balance(cash_bureau("310000")) == 50_000
    assert done.balance(cash_transit("310000", "devbank")) == 0
    assert done.balance(cash_collected("310000")) == -50_000


class Untouchable:
    """A connection a handler must not use."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the handler used the connection ({name})")


async def test_payment_skips_settlement_entries() -> None:
    """A closed day's transfer and its arrival reach payment on ledger.v1: they book no
    payment of its own, so payment leaves them alone (no lookup, no payment_unknown)."""
    state, entries = journal_of(post(38_000, "310000"))
    closing = decide_close_day(
        state.head,
        DAY,
        entries,
        {},
        bank="devbank",
        closed_at=shanghai(23, 5),
        forced=False,
        signer=SIGNER,
    )
    [entry] = closing.entries
    transfer = Transfer(entry.payment_id, DAY, "310000", "devbank", "bureau:310000", 50_000)
    _arrival, arrival = arrival_entry(
        project(state, entry).head,
        transfer,
        confirmed_at=shanghai(23, 6),
        posted_at=shanghai(23, 7),
        clearing_day=DAY,
        signer=SIGNER,
    )
    handlers = PaymentHandlers(TopicNames(""))
    for envelope in (closing.events[0], arrival):
        event = Event(envelope, decode_payload(envelope))
        assert isinstance(event.payload, JournalEntryPosted)
        assert event.payload.kind in NOT_A_PAYMENT
        await handlers.on_journal_entry_posted(Untouchable(), event)  # type: ignore[arg-type]
    assert {"allocation", "settlement", "settlement_arrival"} <= NOT_A_PAYMENT


# ---------------------------------------------------------------------------
# The settlement file
# ---------------------------------------------------------------------------


def test_settlement_file_bytes_and_totals() -> None:
    payments = [line("310000", 38_000, 3), line("310000", 12_000, 7)]
    refund = line("310000", -8_000, 9)
    figures = RegionSettlement(
        region="310000",
        count=3,
        paid=50_000,
        refunded=8_000,
        carried_in=-1_000,
        net=41_000,
        transfer_amount=41_000,
        transfer_reference="st_2026-11-26_310000",
        carried_out=0,
    )
    face = {
        "payer": {"id": "u-1", "id_masked": "u-*1", "name": "张三"},
        "insured": {"name": "张三", "id_number_masked": "110105********002X", "relation": "self"},
    }
    lines = [FileLine(x, face, "2026-11-26") for x in payments]
    lines.append(FileLine(refund, face, "2026-11-25"))
    body = settlement_file(list(reversed(lines)), figures, carried_from="2026-11-25")
    at = "2026-11-26T02:00:00Z"
    assert body.decode().splitlines() == [
        ",".join(COLUMNS),
        f"pay_3,payment,38000,3,,,,张*,张*,110105********002X,wallet,,{at},2026-11-26",
        f"pay_7,payment,12000,7,,,,张*,张*,110105********002X,wallet,,{at},2026-11-26",
        f"pay_9,refund,-8000,9,re_9,,,张*,张*,110105********002X,wallet,,{at},2026-11-25",
        "carried_deficit,deduction,-1000,,,,,,,,,,,2026-11-25",
        "TOTAL,3,50000,8000,41000",
    ]
    assert body == settlement_file(lines, figures, carried_from="2026-11-25")  # deterministic
    assert "张三" not in body.decode()


# ---------------------------------------------------------------------------
# Reconciliation
# ---------------------------------------------------------------------------

HEADER = "reference,kind,amount,currency,booked_at,related_reference,account"


def record(reference: str, kind: str, amount: int, seq: int, hh: int = 10) -> LedgerRecord:
    return LedgerRecord(reference, kind, amount, f"pay_{seq}", seq, shanghai(hh))


def statement(*rows: str) -> str:
    return "\n".join((HEADER, *rows)) + "\n"


def test_reconciliation_names_each_discrepancy() -> None:
    records = [
        record("pay_a", "debit", 100, 1),
        record("pay_b", "debit", 200, 2),
        record("re_c", "refund", 50, 3),
        record("st_x", "transfer", 250, 4),
        record("pay_late", "debit", 70, 5, hh=23),  # the bank's next day
    ]
    text = statement(
        "pay_a,debit,100,CNY,2026-11-26T02:00:00Z,,acct",
        "pay_b,debit,201,CNY,2026-11-26T02:00:00Z,,acct",
        "st_x,transfer,250,CNY,2026-11-26T02:00:00Z,,bureau:310000",
        "st_x,transfer,250,CNY,2026-11-26T02:00:00Z,,bureau:310000",
        "pay_z,debit,30,CNY,2026-11-26T02:00:00Z,,acct",
        "pay_late,debit,70,CNY,2026-11-26T02:00:00Z,,acct",
    )
    result = reconcile(DAY, records, parse_statement(text), cutoff=CUT)
    assert result.matched == 2
    found = {(d.kind, d.reference): d for d in result.discrepancies}
    assert set(found) == {
        ("amount_mismatch", "pay_b"),
        ("missing_in_bank", "re_c"),
        ("duplicate", "st_x"),
        ("missing_in_ledger", "pay_z"),
        ("missing_in_ledger", "pay_late"),
    }
    b = found[("amount_mismatch", "pay_b")]
    assert (b.payment_id, b.journal_seq, b.ledger_amount, b.bank_amount) == ("pay_2", 2, 200, 201)
    missing = found[("missing_in_bank", "re_c")]
    assert (missing.journal_seq, missing.ledger_amount, missing.bank_amount) == (3, 50, None)
    assert found[("missing_in_ledger", "pay_z")].journal_seq is None
    assert found[("missing_in_ledger", "pay_late")].journal_seq == 5  # on its own bank day
    again = reconcile(DAY, list(reversed(records)), parse_statement(text), cutoff=CUT)
    assert again == result


def test_a_debit_the_bank_reversed_itself_is_not_a_discrepancy() -> None:
    text = statement(
        "pay_q,debit,500,CNY,2026-11-26T02:00:00Z,,acct",
        "rv_pay_q,refund,500,CNY,2026-11-26T02:01:00Z,pay_q,acct",
    )
    result = reconcile(DAY, [], parse_statement(text), cutoff=CUT)
    assert (result.matched, result.reversed, result.discrepancies) == (0, 2, ())
    half = statement(
        "pay_q,debit,500,CNY,2026-11-26T02:00:00Z,,acct",
        "rv_pay_q,refund,400,CNY,2026-11-26T02:01:00Z,pay_q,acct",
    )
    assert len(reconcile(DAY, [], parse_statement(half), cutoff=CUT).discrepancies) == 2


def test_a_reversal_on_the_next_bank_day_pairs_with_the_debit_reported_before() -> None:
    """A late debit confirmed just before the cut-off and reversed just after: the
    debit's own day reports it missing_in_ledger; the next day's statement holds only
    the reversal, which that report pairs (reversed, not missing again)."""
    before = statement("pay_q,debit,500,CNY,2026-11-25T14:59:00Z,,acct")
    first = reconcile(DAY, [], parse_statement(before), cutoff=CUT)
    assert [(d.kind, d.reference) for d in first.discrepancies] == [("missing_in_ledger", "pay_q")]
    next_day = DAY + timedelta(days=1)
    after = parse_statement(statement("rv_pay_q,refund,500,CNY,2026-11-25T15:01:00Z,pay_q,acct"))
    earlier = earlier_unbooked_debits([(DAY, first.discrepancies)], next_day)
    assert earlier == {"pay_q": 500}
    result = reconcile(next_day, [], after, cutoff=CUT, earlier_unbooked=earlier)
    assert (result.matched, result.reversed, result.discrepancies) == (0, 1, ())
    # Without the earlier report, or for another amount, or from a later day: missing.
    assert len(reconcile(next_day, [], after, cutoff=CUT).discrepancies) == 1
    other = {"pay_q": 400}
    assert (
        len(reconcile(next_day, [], after, cutoff=CUT, earlier_unbooked=other).discrepancies) == 1
    )
    assert earlier_unbooked_debits([(next_day, first.discrepancies)], next_day) == {}


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "line 1"),
        ("reference,amount\nx,1\n", "'kind'"),
        (statement("a,debit,1.5,CNY,t,,x"), "line 2, column 'amount'"),
        (statement("a,debit,1,CNY,t,,x", "b,loan,1,CNY,t,,x"), "line 3, column 'kind'"),
        (statement("a,debit,1,CNY"), "line 2"),
        (statement(",debit,1,CNY,t,,x"), "column 'reference'"),
        (statement("a,debit,١٢٣,CNY,t,,x"), "line 2, column 'amount'"),  # ١٢٣
        (statement("a,debit,１２,CNY,t,,x"), "line 2, column 'amount'"),  # full-width
    ],
)
def test_a_bad_statement_is_refused_naming_the_line_and_column(text: str, where: str) -> None:
    with pytest.raises(ValidationFailed, match=where):
        parse_statement(text)


def test_day_lines_skip_what_no_bureau_settles() -> None:
    top_up = decide_posting(
        {}, LedgerHead(), payment(purpose="wallet_topup"), now=shanghai(9), keys=KEYS
    )
    assert isinstance(top_up, Posting)
    premium = post(38_000, "310000").entry
    assert [x.payment_id for x in day_lines([top_up.entry, premium])] == [premium.payment_id]
