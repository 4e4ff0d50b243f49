"""The audit fold: a clean log passes; each kind of damage is named with its events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.audit.model import Discrepancy, Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.accounts import transaction_amount
from services.ledger.domain.chain import hash_of
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.projector import LedgerState, project
from services.ledger.domain.receipts import sign_face
from services.ledger.signing import ReceiptSigner
from shared.events import Envelope, Event, JournalLine, decode_payload

SIGNER = ReceiptSigner(b"a" * 32)
OTHER = ReceiptSigner(b"b" * 32)
KEYS = PostingKeys(check_key=b"c" * 32, signer=SIGNER)

Log = list[tuple[str, Envelope]]


def journal(n: int = 60, *, seed: int = 7, payers: int = 8) -> Log:
    return list(SyntheticJournal(KEYS, payers=payers, seed=seed).events(n))


def audit(log: Log, *, payments: bool = True, key: bytes = SIGNER.public_raw) -> Auditor:
    auditor = Auditor(public_key=key)
    if payments:
        auditor.mark_payments_read()
    for offset, (stream, env) in enumerate(log):
        event = Event(env, decode_payload(env))
        where = Where(f"{stream}.v1", 0, offset)
        (auditor.ledger if stream == "ledger" else auditor.payment)(event, where)
    auditor.finish()
    return auditor


def kinds(auditor: Auditor) -> set[str]:
    return {d.kind for d in auditor.findings.kept}


def first(auditor: Auditor, kind: str) -> Discrepancy:
    return next(d for d in auditor.findings.kept if d.kind == kind)


def index_of(log: Log, event_type: str, nth: int = 0) -> int:
    return [i for i, (_, e) in enumerate(log) if e.event_type == event_type][nth]


def edited(env: Envelope, change: Callable[[dict[str, Any]], None]) -> Envelope:
    payload = dict(env.payload)
    change(payload)
    return env.model_copy(update={"payload": payload})


def test_a_clean_log_has_no_discrepancy_and_rebuilds_the_projection() -> None:
    log = journal(200)
    auditor = audit(log)
    assert auditor.findings.total == 0, auditor.findings.kept[:3]
    state = LedgerState()
    for stream, env in log:
        if stream == "ledger":
            state = project(state, decode_payload(env))
    assert auditor.balances == dict(state.balances)
    assert auditor.head == state.head
    assert len(auditor.receipts) == len(state.receipts) == auditor.counts.receipts
    assert sum(b.balance for b in auditor.balances.values()) == 0


def test_redelivered_messages_are_skipped_not_reported() -> None:
    log = journal(40)
    noisy = [item for item in log for _ in range(2)]
    auditor = audit(noisy)
    assert auditor.findings.total == 0
    assert auditor.counts.duplicates == len(log)
    assert auditor.statement_digest() == audit(log).statement_digest()


def test_a_changed_amount_is_named_by_seq_and_event() -> None:
    log = journal()
    i = index_of(log, "JournalEntryPosted", 3)
    stream, env = log[i]

    def bump(p: dict[str, Any]) -> None:
        p["lines"] = [dict(x) for x in p["lines"]]
        p["lines"][-1]["amount"] += 100

    log[i] = (stream, edited(env, bump))
    auditor = audit(log)
    assert {"hash_mismatch", "unbalanced"} <= kinds(auditor)
    found = first(auditor, "hash_mismatch")
    assert found.seq == env.payload["seq"]
    assert found.event_id == str(env.event_id)
    assert found.payment_id == env.correlation_id
    assert found.where == Where("ledger.v1", 0, i)


def test_a_consistently_rewritten_amount_still_breaks_the_chain_and_payments() -> None:
    log = journal()
    i = index_of(log, "JournalEntryPosted", 2)
    stream, env = log[i]
    entry = decode_payload(env)
    lines = tuple(JournalLine(account_id=x.account_id, amount=x.amount * 2) for x in entry.lines)  # type: ignore[attr-defined]
    forged = entry.model_copy(update={"lines": lines})
    forged = forged.model_copy(update={"hash": hash_of(forged)})  # type: ignore[arg-type]
    log[i] = (stream, env.model_copy(update={"payload": forged.model_dump(mode="json")}))
    auditor = audit(log)
    assert "chain_link" in kinds(auditor)  # the next entry points at the old hash
    assert first(auditor, "chain_link").seq == entry.seq + 1  # type: ignore[attr-defined]
    mismatch = first(auditor, "payment_mismatch")
    assert mismatch.payment_id == env.correlation_id
    assert "amount" in mismatch.message


def test_a_deleted_entry_leaves_a_gap_and_an_orphan_payment() -> None:
    log = journal()
    i = index_of(log, "JournalEntryPosted", 4)
    _, gone = log.pop(i)
    seq = gone.payload["seq"]
    auditor = audit(log)
    gap = first(auditor, "seq_gap")
    assert gap.seq == seq + 1
    assert f"entries {seq} are missing" in gap.message
    assert first(auditor, "payment_not_posted").payment_id == gone.correlation_id


def test_a_receipt_signed_with_another_key_fails() -> None:
    log = journal()
    i = index_of(log, "ReceiptIssued", 1)
    stream, env = log[i]
    log[i] = (stream, edited(env, lambda p: p.update(signature=sign_face(p["receipt"], OTHER))))
    auditor = audit(log)
    assert kinds(auditor) == {"receipt_signature"}
    found = first(auditor, "receipt_signature")
    assert found.event_id == str(env.event_id)
    assert found.seq == env.payload["journal_seq"]


def test_a_missing_receipt_leaves_a_number_gap() -> None:
    log = journal()
    i = index_of(log, "ReceiptIssued", 1)
    _, gone = log.pop(i)
    auditor = audit(log)
    assert {"receipt_missing", "receipt_number_gap"} <= kinds(auditor)
    assert first(auditor, "receipt_missing").seq == gone.payload["journal_seq"]


def test_an_overdraft_posted_with_a_valid_hash_is_still_caught() -> None:
    log = journal(30, payers=1)
    i = index_of(log, "JournalEntryPosted", 1)
    entry = decode_payload(log[i][1])
    wallet = f"wallet:{entry.payer_id}"  # type: ignore[attr-defined]
    lines = (
        JournalLine(account_id=wallet, amount=-(10**9)),
        JournalLine(account_id="bureau:110000:premium", amount=10**9),
    )
    forged = entry.model_copy(update={"lines": lines})
    forged = forged.model_copy(update={"hash": hash_of(forged)})  # type: ignore[arg-type]
    log[i] = (log[i][0], log[i][1].model_copy(update={"payload": forged.model_dump(mode="json")}))
    auditor = audit(log[: i + 1], payments=False)
    assert "negative_balance" in kinds(auditor)
    assert wallet in first(auditor, "negative_balance").message


def test_payments_and_journal_must_match_one_to_one() -> None:
    log = journal()
    succeeded = [i for i, (_, e) in enumerate(log) if e.event_type == "PaymentSucceeded"]
    dropped = log[succeeded[0]][1]
    changed_i = succeeded[1]
    log[changed_i] = (
        log[changed_i][0],
        edited(log[changed_i][1], lambda p: p.update(amount=p["amount"] + 1)),
    )
    del log[succeeded[0]]
    auditor = audit(log)
    assert first(auditor, "posting_without_payment").payment_id == dropped.correlation_id
    assert first(auditor, "payment_mismatch").seq is not None
    assert audit(journal(), payments=False).findings.total == 0


def test_transaction_amount_ignores_clearing() -> None:
    entry = decode_payload(journal(3)[0][1])
    assert transaction_amount(entry) == entry.lines[-1].amount  # type: ignore[attr-defined]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), payers=st.integers(1, 20), n=st.integers(1, 80))
def test_any_generated_log_is_clean_and_sums_to_zero(seed: int, payers: int, n: int) -> None:
    auditor = audit(journal(n, seed=seed, payers=payers))
    assert auditor.findings.total == 0
    assert sum(b.balance for b in auditor.balances.values()) == 0
    assert all(
        b.balance >= 0 for a, b in auditor.balances.items() if a.startswith(("wallet:", "medical:"))
    )


def test_a_success_naming_another_receipt_is_a_mismatch() -> None:
    log = journal()
    i = next(
        i
        for i, (_, e) in enumerate(log)
        if e.event_type == "PaymentSucceeded" and e.payload["receipt"]
    )

    def other_receipt(p: dict[str, Any]) -> None:
        p["receipt"] = {**p["receipt"], "number": "9999999999"}

    log[i] = (log[i][0], edited(log[i][1], other_receipt))
    auditor = audit(log)
    assert kinds(auditor) == {"payment_mismatch"}
    assert "receipt" in first(auditor, "payment_mismatch").message
