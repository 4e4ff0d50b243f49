"""Ledger rules: postings, the hash chain, receipts and the projector fold."""

from __future__ import annotations

import base64
import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.domain.accounts import (
    BANK_FUNDING,
    CLEARING,
    InvalidPosting,
    is_well_formed_account,
)
from services.ledger.domain.chain import GENESIS_HASH, LedgerHead, hash_of, transaction_id
from services.ledger.domain.posting import Posting, PostingKeys, decide_posting
from services.ledger.domain.projector import ChainBroken, LedgerState, project
from services.ledger.domain.receipts import ReceiptPolicy, check_code, mask_name, receipt_code
from services.ledger.signing import ReceiptSigner, verify_face
from shared.events import (
    BeneficiaryRef,
    JournalEntryPosted,
    PaymentDetails,
    PostingRejected,
    Purpose,
)

SIGNER = ReceiptSigner(b"s" * 32)
KEYS = PostingKeys(check_key=b"k" * 32, signer=SIGNER)
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def payment(
    *,
    payer: str = "u-1",
    amount: int = 38000,
    method: str = "bank_card",
    purpose: str = "premium",
    region: str = "110000",
    payment_id: str | None = None,
) -> PaymentDetails:
    return PaymentDetails.model_validate(
        {
            "payment_id": payment_id or f"pay_{uuid.uuid4().hex[:12]}",
            "payer_id": payer,
            "payer_phone_masked": "138****8000",
            "payer_phone_sealed": "v1.sealed",
            "beneficiary": BeneficiaryRef(
                id_number_masked="110105********002X",
                id_number_hash="h" * 64,
                name="张三",
                relation="self",
            ),
            "purpose": Purpose(
                type=purpose,
                region=region,
                scheme="urban_rural_resident" if purpose == "premium" else None,
                period="2027" if purpose == "premium" else None,
            ),
            "amount": amount,
            "method": method,
            "payee_id": f"bureau:{region}" if purpose == "premium" else f"wallet:{payer}",
            "payee_name": "北京市医疗保障局" if purpose == "premium" else "零钱",
            "requested_at": NOW,
        }
    )


def post(state: LedgerState, p: PaymentDetails, now: datetime = NOW) -> tuple[LedgerState, Any]:
    decision = decide_posting(state.amounts(), state.head, p, now=now, keys=KEYS)
    if isinstance(decision, Posting):
        state = project(state, decision.entry)
        if decision.receipt is not None:
            state = project(state, decision.receipt)
    return state, decision


# ---------------------------------------------------------------------------
# Postings
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "purpose", "source", "destination"),
    [
        ("bank_card", "premium", BANK_FUNDING, "bureau:110000:premium"),
        ("wallet", "premium", "wallet:u-1", "bureau:110000:premium"),
        ("medical_account", "premium", "medical:u-1", "bureau:110000:premium"),
        ("bank_card", "wallet_topup", BANK_FUNDING, "wallet:u-1"),
    ],
)
def test_lines_route_through_clearing(
    method: str, purpose: str, source: str, destination: str
) -> None:
    balances = {"wallet:u-1": 10**9, "medical:u-1": 10**9}
    decision = decide_posting(
        balances, LedgerHead(), payment(method=method, purpose=purpose), now=NOW, keys=KEYS
    )
    assert isinstance(decision, Posting)
    lines = [(line.account_id, line.amount) for line in decision.entry.lines]
    assert lines == [(source, -38000), (CLEARING, 38000), (CLEARING, -38000), (destination, 38000)]
    assert (decision.receipt is not None) == (purpose == "premium")


@pytest.mark.parametrize("method", ["wallet", "medical_account"])
def test_wallet_topup_must_come_from_bank_card(method: str) -> None:
    with pytest.raises(InvalidPosting):
        decide_posting(
            {}, LedgerHead(), payment(method=method, purpose="wallet_topup"), now=NOW, keys=KEYS
        )


@pytest.mark.parametrize(
    ("method", "account"), [("wallet", "wallet:u-1"), ("medical_account", "medical:u-1")]
)
def test_insufficient_funds_is_rejected_with_figures(method: str, account: str) -> None:
    decision = decide_posting(
        {account: 1200}, LedgerHead(), payment(method=method), now=NOW, keys=KEYS
    )
    assert isinstance(decision, PostingRejected)
    assert (decision.account_id, decision.balance, decision.amount) == (account, 1200, 38000)
    assert decision.decline_code == "insufficient_funds"
    assert "12.00" in decision.message
    assert "380.00" in decision.message
    assert "bank card" in decision.message


def test_exact_balance_posts() -> None:
    decision = decide_posting(
        {"wallet:u-1": 38000}, LedgerHead(), payment(method="wallet"), now=NOW, keys=KEYS
    )
    assert isinstance(decision, Posting)


def test_transaction_id_is_derived_from_the_payment() -> None:
    assert transaction_id("pay_1") == transaction_id("pay_1") != transaction_id("pay_2")


payments = st.builds(
    lambda payer, amount, kind, region: (payer, amount, kind, region),
    st.sampled_from(["u-1", "u-2", "u-3"]),
    st.integers(min_value=1, max_value=500_000),
    st.sampled_from(["topup", "wallet", "medical_account", "bank_card"]),
    st.sampled_from(["110000", "310000", "440100"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(payments, min_size=1, max_size=30))
def test_any_sequence_keeps_the_books(orders: list[tuple[str, int, str, str]]) -> None:
    state = LedgerState()
    prev_hash = GENESIS_HASH
    seq = 0
    for payer, amount, kind, region in orders:
        p = (
            payment(payer=payer, amount=amount, method="bank_card", purpose="wallet_topup")
            if kind == "topup"
            else payment(payer=payer, amount=amount, method=kind, region=region)
        )
        before = state.amounts()
        state, decision = post(state, p)
        if isinstance(decision, PostingRejected):
            assert before.get(decision.account_id, 0) < amount
            assert state.amounts() == before
            continue
        entry = decision.entry
        seq += 1
        assert entry.seq == seq
        assert entry.prev_hash == prev_hash
        prev_hash = entry.hash
        assert sum(line.amount for line in entry.lines) == 0
        assert sum(line.amount for line in entry.lines if line.account_id == CLEARING) == 0
        for account, balance in state.amounts().items():
            if account.startswith(("wallet:", "medical:")):
                assert balance >= 0
        assert sum(state.amounts().values()) == 0
    # Receipt numbers are gapless from 1 within each code.
    by_code: dict[str, list[int]] = {}
    for code, number in sorted(state.receipts):
        by_code.setdefault(code, []).append(int(number))
    for numbers in by_code.values():
        assert numbers == list(range(1, len(numbers) + 1))


# ---------------------------------------------------------------------------
# Hash chain
# ---------------------------------------------------------------------------


def chain(n: int) -> list[JournalEntryPosted]:
    state, out = LedgerState(), []
    for _ in range(n):
        state, decision = post(state, payment())
        out.append(decision.entry)
    return out


def test_hash_chain_links_from_genesis() -> None:
    entries = chain(3)
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.seq for e in entries] == [1, 2, 3]
    for before, after in itertools.pairwise(entries):
        assert after.prev_hash == before.hash
    for e in entries:
        assert hash_of(e) == e.hash
        assert len(e.hash) == 64


def test_hash_survives_the_wire() -> None:
    entry = chain(1)[0]
    again = JournalEntryPosted.model_validate_json(entry.model_dump_json())
    assert hash_of(again) == entry.hash


def test_fold_refuses_gaps_forks_and_alterations() -> None:
    e1, e2, e3 = chain(3)
    state = project(LedgerState(), e1)
    with pytest.raises(ChainBroken):
        project(state, e3)  # gap
    altered = e2.model_copy(update={"posted_at": e2.posted_at + timedelta(seconds=1)})
    with pytest.raises(ChainBroken):
        project(state, altered)
    forked = e1.model_copy(update={"hash": "f" * 64})
    with pytest.raises(ChainBroken):
        project(state, forked)
    assert project(state, e1) is state  # a republished entry changes nothing


# ---------------------------------------------------------------------------
# Receipts
# ---------------------------------------------------------------------------


def test_receipt_code_format() -> None:
    assert receipt_code("110000", datetime(2026, 6, 1, tzinfo=UTC), ReceiptPolicy()) == "11060126"
    # 2026-12-31 16:30 UTC is already 2027 in Shanghai.
    late = datetime(2026, 12, 31, 16, 30, tzinfo=UTC)
    assert receipt_code("310000", late, ReceiptPolicy(category="07", type_code="02")) == "31070227"


def test_receipt_numbers_are_gapless_per_code_and_restart_per_code() -> None:
    state = LedgerState()
    refs = []
    for region in ["110000", "110000", "310000", "110000", "310000"]:
        state, decision = post(state, payment(region=region))
        refs.append((decision.entry.receipt.code, decision.entry.receipt.number))
    assert refs == [
        ("11060126", "0000000001"),
        ("11060126", "0000000002"),
        ("31060126", "0000000001"),
        ("11060126", "0000000003"),
        ("31060126", "0000000002"),
    ]
    # A new year is a new code: numbering restarts.
    state, decision = post(state, payment(), now=datetime(2027, 3, 1, tzinfo=UTC))
    assert (decision.entry.receipt.code, decision.entry.receipt.number) == (
        "11060127",
        "0000000001",
    )
    assert state.head.next_receipt_numbers == {"11060126": 4, "31060126": 3, "11060127": 2}


def test_check_code_is_deterministic_and_keyed() -> None:
    a = check_code(b"k" * 32, "11060126", "0000000001", "pay_1", 38000)
    assert a == check_code(b"k" * 32, "11060126", "0000000001", "pay_1", 38000)
    assert re.fullmatch(r"[A-Z2-7]{6}", a)
    assert a != check_code(b"j" * 32, "11060126", "0000000001", "pay_1", 38000)
    assert a != check_code(b"k" * 32, "11060126", "0000000002", "pay_1", 38000)


def test_receipt_face_and_signature() -> None:
    p = payment(amount=38000)
    decision = decide_posting({}, LedgerHead(), p, now=NOW, keys=KEYS)
    assert isinstance(decision, Posting)
    assert decision.receipt is not None
    issued = decision.receipt
    face = issued.receipt
    assert face["title"] == "医疗保障费用电子票据"
    assert face["items"] == [{"name": "城乡居民基本医疗保险费 2027", "amount": 38000}]
    assert face["total_in_words"] == "叁佰捌拾元整"
    assert face["issue_date"] == "2026-11-23"
    assert face["issued_at"] == "2026-11-23T12:00:00Z"
    assert face["payee"] == "北京市医疗保障局"
    assert face["reviewer"] == "系统复核"
    ref = decision.entry.receipt
    assert ref is not None
    assert face["check_code"] == ref.check_code
    assert face["qr_payload"] == f"yibao-receipt:{ref.code}:{ref.number}:{ref.check_code}"
    assert "id_number" not in face["insured"]
    # The payer (交款人, the paying account) apart from the insured person (参保人).
    assert face["insured"] == {
        "name": "张三",
        "id_number_masked": "110105********002X",
        "relation": "self",
    }
    assert face["payer"] == {"id": "u-1", "id_masked": "***", "name": "张三"}
    assert "payer_name" not in face
    assert issued.key_id == SIGNER.key_id
    assert len(issued.key_id) == 16
    assert issued.payer_phone_sealed == "v1.sealed"
    assert verify_face(face, issued.signature, SIGNER.public_raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total", 1),
        ("number", "0000000009"),
        ("insured", {"name": "李四"}),
        ("check_code", "AAAAAA"),
        ("payee", "别的局"),
        ("issue_date", "2026-11-24"),
    ],
)
def test_signature_fails_when_a_face_field_changes(field: str, value: object) -> None:
    decision = decide_posting({}, LedgerHead(), payment(), now=NOW, keys=KEYS)
    assert isinstance(decision, Posting)
    assert decision.receipt is not None
    face = dict(decision.receipt.receipt)
    face[field] = value
    assert not verify_face(face, decision.receipt.signature, SIGNER.public_raw)


def test_signature_fails_under_another_key() -> None:
    decision = decide_posting({}, LedgerHead(), payment(), now=NOW, keys=KEYS)
    assert isinstance(decision, Posting)
    assert decision.receipt is not None
    other = ReceiptSigner(b"o" * 32)
    assert not verify_face(decision.receipt.receipt, decision.receipt.signature, other.public_raw)
    assert not verify_face(decision.receipt.receipt, "not base64!", SIGNER.public_raw)
    assert base64.b64decode(decision.receipt.signature)


def test_replay_folds_to_the_same_state() -> None:
    state = LedgerState()
    events = []
    for p in [
        payment(purpose="wallet_topup", amount=100000),
        payment(method="wallet"),
        payment(method="wallet", amount=10**7),
    ]:
        state, decision = post(state, p)
        if isinstance(decision, Posting):
            events.append(decision.entry)
            if decision.receipt:
                events.append(decision.receipt)
    replayed = LedgerState()
    for event in events + events:  # duplicates (a republished topic) change nothing
        replayed = project(replayed, event)
    assert replayed == state
    assert state.balance("wallet:u-1") == 62000


@pytest.mark.parametrize(
    ("account", "ok"),
    [
        ("wallet:u-1001", True),
        ("medical:u-1", True),
        ("bureau:110000:premium", True),
        ("bank:funding", True),
        ("clearing:platform", True),
        ("bureau:11:premium", False),
        ("wallet:", False),
        ("nonsense", False),
        ("wallet:a b", False),
    ],
)
def test_well_formed_accounts(account: str, ok: bool) -> None:
    assert is_well_formed_account(account) is ok


def test_mask_name() -> None:
    assert (mask_name("张三"), mask_name("欧阳娜娜"), mask_name("李")) == ("张*", "欧***", "李*")


def test_payee_falls_back_to_the_configured_bureau_name() -> None:
    policy = ReceiptPolicy(bureau_names={"310000": "上海市医疗保障局"})
    named = payment(region="310000")
    assert policy.payee_of(named) == "北京市医疗保障局"  # the payment's own payee name wins
    unnamed = named.model_copy(update={"payee_name": ""})
    assert policy.payee_of(unnamed) == "上海市医疗保障局"
    # shared.regions names every GB/T 2260 region's bureau (since 8883b5b); an override wins.
    assert ReceiptPolicy(bureau_names={}).payee_of(unnamed) == "上海市医疗保障局"
