"""Money from outside, the ledger's pure rules: bank confirmation, allocations, refunds
and red receipts (红冲)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from services.ledger.domain.accounts import (
    BANK_FUNDING,
    CLEARING,
    InvalidPosting,
    is_well_formed_account,
)
from services.ledger.domain.chain import LedgerHead, entry_body, event_id_for, hash_of
from services.ledger.domain.posting import (
    AllocationContext,
    PaymentContext,
    Posting,
    RefundContext,
    decide_allocation,
    decide_payment,
    decide_posting,
    decide_refund_posting,
)
from services.ledger.domain.projector import LedgerState, project
from services.ledger.domain.receipts import ReceiptPolicy, face_parties, relates_to
from services.ledger.signing import verify_face
from shared.events import (
    BankConfirmation,
    JournalEntryPosted,
    MedicalAccountAllocated,
    PaymentAuthorized,
    PostingRejected,
    RefundAuthorized,
)
from tests.unit.test_ledger_domain import KEYS, NOW, SIGNER, payment

POLICY = ReceiptPolicy()


def bank(reference: str = "bk_1") -> BankConfirmation:
    return BankConfirmation(reference=reference, confirmed_at=NOW)


def premium_posting(method: str = "bank_card", amount: int = 38_000) -> tuple[Posting, object]:
    p = payment(method=method, amount=amount)
    balances = {f"wallet:{p.payer_id}": 10**9, f"medical:{p.payer_id}": 10**9}
    reference = "bk_1" if method == "bank_card" else None
    posted = decide_posting(balances, LedgerHead(), p, now=NOW, keys=KEYS, bank_reference=reference)
    assert isinstance(posted, Posting)
    return posted, p


def refund_of(p: object, amount: int, refund_id: str = "re_1") -> RefundAuthorized:
    from shared.events import PaymentDetails

    assert isinstance(p, PaymentDetails)
    return RefundAuthorized(
        refund_id=refund_id,
        payment_id=p.payment_id,
        payer_id=p.payer_id,
        amount=amount,
        method=p.method,
        purpose=p.purpose,
        payee_id=p.payee_id,
        payee_name=p.payee_name,
        original_journal_seq=1,
        original_receipt=None,
        bank_refund=bank(f"bk_{refund_id}") if p.method == "bank_card" else None,
        payer_phone_masked="138****8000",
        payer_phone_sealed="v1.sealed",
        authorized_at=NOW,
    )


def context(posted: Posting, refunded: int = 0, **balances: int) -> RefundContext:
    head = LedgerState()
    head = project(head, posted.entry)
    if posted.receipt is not None:
        head = project(head, posted.receipt)
    face = posted.receipt.receipt if posted.receipt else None
    return RefundContext(head.head, None, posted.entry, face, refunded, dict(balances))


def test_bank_card_needs_the_banks_confirmation() -> None:
    p = payment(method="bank_card")
    ctx = PaymentContext(LedgerHead(), None, {})
    unconfirmed = PaymentAuthorized(payment=p, stepped_up=False)
    with pytest.raises(InvalidPosting, match="bank_debit"):
        decide_payment(
            unconfirmed, ctx, causation_id=uuid.uuid4(), now=NOW, keys=KEYS, policy=POLICY
        )
    confirmed = PaymentAuthorized(payment=p, stepped_up=False, bank_debit=bank("bk_77"))
    made = decide_payment(
        confirmed, ctx, causation_id=uuid.uuid4(), now=NOW, keys=KEYS, policy=POLICY
    )
    assert isinstance(made.outcome, Posting)
    entry = made.outcome.entry
    assert entry.bank_reference == "bk_77"
    assert "bank_reference" in entry_body(entry) and hash_of(entry) == entry.hash
    assert made.events[0].schema_version == 2  # JournalEntryPosted v2
    # A wallet payment needs no bank and hashes exactly like a v1 entry (no new keys).
    w = payment(method="wallet")
    walleted = decide_payment(
        PaymentAuthorized(payment=w, stepped_up=False),
        PaymentContext(LedgerHead(), None, {f"wallet:{w.payer_id}": 10**6}),
        causation_id=uuid.uuid4(),
        now=NOW,
        keys=KEYS,
        policy=POLICY,
    )
    assert isinstance(walleted.outcome, Posting)
    body = entry_body(walleted.outcome.entry)
    assert "bank_reference" not in body and "refund_id" not in body


def test_allocation_lines_and_ids() -> None:
    allocated = MedicalAccountAllocated(
        allocation_id="al_1",
        region="110000",
        period="2027",
        payer_id="u-9",
        amount=120_000,
        allocated_at=NOW,
        payer_phone_masked=None,
        payer_phone_sealed=None,
    )
    made = decide_allocation(
        allocated, AllocationContext(LedgerHead(), None), causation_id=uuid.uuid4(), now=NOW
    )
    assert isinstance(made.outcome, Posting)
    entry = made.outcome.entry
    assert entry.kind == "allocation" and entry.payment_id == "al_1"
    assert entry.receipt is None and made.outcome.receipt is None
    assert [(x.account_id, x.amount) for x in entry.lines] == [
        ("bureau:110000:medical_fund", -120_000),
        ("medical:u-9", 120_000),
    ]
    assert is_well_formed_account("bureau:110000:medical_fund")
    state = project(LedgerState(), entry)
    assert state.balance("medical:u-9") == 120_000
    # The medical account then pays; beyond its balance it is insufficient_funds.
    p = payment(method="medical_account", amount=100_000, payer="u-9")
    assert isinstance(decide_posting(state.amounts(), state.head, p, now=NOW, keys=KEYS), Posting)
    too_much = payment(method="medical_account", amount=120_001, payer="u-9")
    rejected = decide_posting(state.amounts(), state.head, too_much, now=NOW, keys=KEYS)
    assert isinstance(rejected, PostingRejected)
    assert rejected.decline_code == "insufficient_funds"


@pytest.mark.parametrize("method", ["bank_card", "wallet", "medical_account"])
def test_a_refund_reverses_the_original_lines(method: str) -> None:
    posted, p = premium_posting(method)
    refund = refund_of(p, 10_000)
    made = decide_refund_posting(refund, context(posted), now=NOW, keys=KEYS, policy=POLICY)
    assert isinstance(made, Posting)
    entry = made.entry
    original = [(x.account_id, x.amount) for x in posted.entry.lines]
    source, destination = original[0][0], original[-1][0]
    assert [(x.account_id, x.amount) for x in entry.lines] == [
        (destination, -10_000),
        (CLEARING, 10_000),
        (CLEARING, -10_000),
        (source, 10_000),
    ]
    assert entry.kind == "refund" and entry.refund_id == "re_1"
    assert entry.payment_id == posted.entry.payment_id
    assert entry.transaction_id != posted.entry.transaction_id
    assert entry.bank_reference == ("bk_re_1" if method == "bank_card" else None)
    assert entry.seq == 2 and entry.prev_hash == posted.entry.hash
    assert source == {"bank_card": BANK_FUNDING}.get(method, source)


def test_red_receipt_numbering_face_and_signature() -> None:
    posted, p = premium_posting()
    later = NOW + timedelta(hours=1)
    made = decide_refund_posting(
        refund_of(p, 8_000), context(posted), now=later, keys=KEYS, policy=POLICY
    )
    assert isinstance(made, Posting) and made.receipt is not None
    original_ref, red_ref = posted.entry.receipt, made.entry.receipt
    assert original_ref is not None and red_ref is not None
    assert red_ref.code == original_ref.code  # the same gapless numbering of that code
    assert int(red_ref.number) == int(original_ref.number) + 1
    assert red_ref.check_code != original_ref.check_code
    face = made.receipt.receipt
    assert face["kind"] == "red"
    assert face["total"] == -8_000 and face["items"][0]["amount"] == -8_000
    assert face["total_in_words"].startswith("负")
    assert face["relates_to"] == {"code": original_ref.code, "number": original_ref.number}
    assert relates_to(face) == (original_ref.code, original_ref.number)
    assert face["refund_id"] == "re_1"
    assert face_parties(face).insured_name == "张三"
    assert made.receipt.refund_id == "re_1"
    assert verify_face(face, made.receipt.signature, SIGNER.public_raw)
    # The original is never edited: the red receipt is a new face.
    assert posted.receipt is not None and "relates_to" not in posted.receipt.receipt


def test_refunds_never_exceed_the_payment() -> None:
    posted, p = premium_posting(amount=38_000)
    ok = decide_refund_posting(
        refund_of(p, 18_000), context(posted, refunded=20_000), now=NOW, keys=KEYS, policy=POLICY
    )
    assert isinstance(ok, Posting)
    over = decide_refund_posting(
        refund_of(p, 18_001), context(posted, refunded=20_000), now=NOW, keys=KEYS, policy=POLICY
    )
    assert isinstance(over, PostingRejected)
    assert over.decline_code == "refund_exceeds_payment"
    assert over.refund_id == "re_1" and over.balance == 18_000 and over.amount == 18_001
    nothing = RefundContext(LedgerHead(), None, None, None, 0)
    missing = decide_refund_posting(refund_of(p, 1), nothing, now=NOW, keys=KEYS, policy=POLICY)
    assert isinstance(missing, PostingRejected)
    assert missing.decline_code == "refund_exceeds_payment"
    assert "not in the journal" in missing.message


def test_a_topup_refund_needs_the_wallet_to_cover_it() -> None:
    p = payment(method="bank_card", purpose="wallet_topup", amount=50_000)
    posted = decide_posting({}, LedgerHead(), p, now=NOW, keys=KEYS, bank_reference="bk")
    assert isinstance(posted, Posting) and posted.receipt is None
    wallet = f"wallet:{p.payer_id}"
    spent = decide_refund_posting(
        refund_of(p, 50_000), context(posted, **{wallet: 10_000}), now=NOW, keys=KEYS, policy=POLICY
    )
    assert isinstance(spent, PostingRejected) and spent.decline_code == "insufficient_funds"
    back = decide_refund_posting(
        refund_of(p, 50_000), context(posted, **{wallet: 50_000}), now=NOW, keys=KEYS, policy=POLICY
    )
    assert isinstance(back, Posting) and back.receipt is None
    assert [(x.account_id, x.amount) for x in back.entry.lines][::3] == [
        (wallet, -50_000),
        (BANK_FUNDING, 50_000),
    ]


def test_event_ids_are_deterministic_and_told_apart_by_refund() -> None:
    a = event_id_for("pay_1", "JournalEntryPosted")
    assert a == event_id_for("pay_1", "JournalEntryPosted")
    assert a != event_id_for("pay_1", "JournalEntryPosted", "re_1")
    assert event_id_for("pay_1", "JournalEntryPosted", "re_1") != event_id_for(
        "pay_1", "JournalEntryPosted", "re_2"
    )


def test_v1_entries_hash_without_the_new_fields() -> None:
    posted, _ = premium_posting(method="wallet")
    v1 = posted.entry.model_dump(mode="json")
    del v1["refund_id"], v1["bank_reference"]
    again = JournalEntryPosted.model_validate(v1)
    assert hash_of(again) == posted.entry.hash
    assert datetime.now(UTC) > NOW
