"""The audit rules of money from outside: refunds match their RefundSucceeded and never
exceed their payment, red receipts reverse an existing original, allocations match
their MedicalAccountAllocated. Tampering is named."""

from __future__ import annotations

from typing import Any

from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.chain import GENESIS_HASH, hash_of
from services.ledger.domain.projector import LedgerState, project
from services.ledger.domain.receipts import sign_face
from shared.events import Envelope, JournalEntryPosted, JournalLine, decode_payload
from tests.unit.test_audit_checks import KEYS, SIGNER, Log, audit, edited, first, kinds


def journal(n: int = 300, *, seed: int = 11) -> Log:
    return list(SyntheticJournal(KEYS, payers=6, seed=seed, money_from_outside=True).events(n))


def nth_refund(log: Log, nth: int = 0) -> int:
    found = [
        i
        for i, (_, e) in enumerate(log)
        if e.event_type == "JournalEntryPosted" and e.payload["kind"] == "refund"
    ]
    return found[nth]


def red_receipt(log: Log, nth: int = 0) -> int:
    found = [
        i
        for i, (_, e) in enumerate(log)
        if e.event_type == "ReceiptIssued" and e.payload["receipt"].get("kind") == "red"
    ]
    return found[nth]


def rechain(log: Log) -> None:
    """An insider's forgery: every entry re-hashed so the chain links again."""
    prev = GENESIS_HASH
    for i, (stream, env) in enumerate(log):
        if env.event_type != "JournalEntryPosted":
            continue
        entry = decode_payload(env)
        assert isinstance(entry, JournalEntryPosted)
        if entry.seq <= 0:
            continue
        linked = entry.model_copy(update={"prev_hash": prev})
        linked = linked.model_copy(update={"hash": hash_of(linked)})
        prev = linked.hash
        log[i] = (stream, env.model_copy(update={"payload": linked.model_dump(mode="json")}))


def test_a_log_with_allocations_and_refunds_is_clean_and_rebuilds() -> None:
    for seed in (11, 12, 13):
        log = journal(seed=seed)
        auditor = audit(log)
        assert auditor.findings.total == 0, auditor.findings.kept[:3]
        assert auditor.counts.refunds > 0 and auditor.counts.allocations > 0
        state = LedgerState()
        for stream, env in log:
            if stream == "ledger":
                state = project(state, decode_payload(env))
        assert auditor.balances == dict(state.balances)
        assert auditor.head == state.head


def test_a_changed_refund_amount_fails_and_is_named() -> None:
    log = journal()
    i = nth_refund(log)
    stream, env = log[i]

    def triple(p: dict[str, Any]) -> None:
        p["lines"] = [{**x, "amount": x["amount"] * 3} for x in p["lines"]]

    log[i] = (stream, edited(env, triple))
    rechain(log)  # even with the chain re-linked by someone holding the journal
    auditor = audit(log)
    found = kinds(auditor)
    assert "refund_mismatch" in found
    mismatch = first(auditor, "refund_mismatch")
    assert mismatch.seq == env.payload["seq"]
    assert mismatch.payment_id == env.payload["payment_id"]
    assert env.payload["refund_id"] in mismatch.message
    assert "refund_exceeds_payment" in found or "receipt_mismatch" in found


def test_refunds_beyond_the_payment_are_named() -> None:
    log = journal()
    i = nth_refund(log)
    stream, env = log[i]

    def huge(p: dict[str, Any]) -> None:
        p["lines"] = [{**x, "amount": x["amount"] * 1000} for x in p["lines"]]

    log[i] = (stream, edited(env, huge))
    rechain(log)
    auditor = audit(log, payments=False)
    exceeded = first(auditor, "refund_exceeds_payment")
    assert exceeded.seq == env.payload["seq"]
    assert exceeded.payment_id == env.payload["payment_id"]


def test_a_red_receipt_pointing_at_nothing_is_named() -> None:
    log = journal()
    i = red_receipt(log)
    stream, env = log[i]
    face = dict(env.payload["receipt"])
    face["relates_to"] = {"code": face["relates_to"]["code"], "number": "9999999999"}

    def repoint(p: dict[str, Any]) -> None:
        p["receipt"] = face
        p["signature"] = sign_face(face, SIGNER)  # re-signed: only the link is wrong

    log[i] = (stream, edited(env, repoint))
    auditor = audit(log)
    assert kinds(auditor) == {"red_receipt_orphan"}
    orphan = first(auditor, "red_receipt_orphan")
    assert "9999999999" in orphan.message
    assert orphan.seq == env.payload["journal_seq"]


def test_a_refund_without_its_success_and_an_allocation_without_its_event() -> None:
    log = journal()
    dropped: list[Envelope] = []
    kept: Log = []
    wanted = {"RefundSucceeded", "MedicalAccountAllocated"}
    for stream, env in log:
        if env.event_type in wanted:
            wanted.discard(env.event_type)
            dropped.append(env)
            continue
        kept.append((stream, env))
    auditor = audit(kept)
    assert {"refund_not_succeeded", "allocation_without_event"} <= kinds(auditor)


def test_an_allocation_amount_changed_is_named() -> None:
    log = journal()
    i = next(
        i
        for i, (_, e) in enumerate(log)
        if e.event_type == "JournalEntryPosted" and e.payload["kind"] == "allocation"
    )
    stream, env = log[i]

    def more(p: dict[str, Any]) -> None:
        p["lines"] = [
            JournalLine(account_id=x["account_id"], amount=x["amount"] * 2).model_dump()
            for x in p["lines"]
        ]

    log[i] = (stream, edited(env, more))
    rechain(log)
    mismatch = first(audit(log), "allocation_mismatch")
    assert mismatch.payment_id == env.payload["payment_id"]
