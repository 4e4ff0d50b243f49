"""Tamper evidence an insider without the ledger's key cannot get round (issue 10):
(a) a forged entry appended with a recomputed hash, plus a forged PaymentSucceeded;
(b) the last payments cut off both topics; (c) an altered copy of an entry that keeps
the old hash. Each fails the audit and names what it found."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from services.ledger.audit.cli import main
from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.chain import LedgerHead, hash_of
from services.ledger.domain.posting import seal
from services.ledger.domain.projector import LedgerState, project
from services.ledger.domain.settlement import (
    Transfer,
    arrival_entry,
    decide_close_day,
    sign_checkpoint,
)
from services.ledger.signing import ReceiptSigner, entry_signature_verifies
from shared.events import (
    ClearingDayClosed,
    Event,
    JournalCheckpoint,
    JournalEntryPosted,
    JournalLine,
    PaymentSucceeded,
    decode_payload,
    new_event,
)
from tests.unit.test_audit_checks import KEYS, OTHER, SIGNER, Log, audit, first, kinds
from tests.unit.test_audit_export import write_export

CUT = 6  # ledger events cut off in (b)


def signed_journal(n: int = 60) -> Log:
    return list(SyntheticJournal(KEYS, payers=8, seed=11, signed=True).events(n))


def head_of(log: Log) -> LedgerHead:
    state = LedgerState()
    for stream, env in log:
        if stream == "ledger":
            state = project(state, decode_payload(env))
    return state.head


def checkpoint(log: Log, signer: ReceiptSigner = SIGNER) -> JournalCheckpoint:
    return sign_checkpoint(head_of(log), _at(log), signer)


def _at(log: Log) -> datetime:
    return log[-1][1].occurred_at + timedelta(seconds=1)


def last_entry(log: Log) -> JournalEntryPosted:
    envs = [e for s, e in log if e.event_type == "JournalEntryPosted"]
    entry = decode_payload(envs[-1])
    assert isinstance(entry, JournalEntryPosted)
    return entry


def test_a_signed_journal_audits_clean() -> None:
    log = signed_journal()
    auditor = audit(log)
    assert auditor.findings.total == 0, auditor.findings.kept[:3]
    assert entry_signature_verifies(last_entry(log), SIGNER.public_raw)
    assert audit(log).findings.total == 0  # and deterministic


def forged_payment(log: Log, key: ReceiptSigner | None) -> Log:
    """(a): a new entry after the head, its hash recomputed, and its PaymentSucceeded."""
    previous = last_entry(log)
    head = head_of(log)
    entry = JournalEntryPosted(
        seq=head.seq + 1,
        transaction_id="00000000-0000-0000-0000-000000000001",
        payment_id="pay_forged",
        payer_id="u-mallory",
        kind="wallet_topup",
        lines=(
            JournalLine(account_id="bank:funding", amount=-900_000),
            JournalLine(account_id="clearing:platform", amount=900_000),
            JournalLine(account_id="clearing:platform", amount=-900_000),
            JournalLine(account_id="wallet:u-mallory", amount=900_000),
        ),
        posted_at=previous.posted_at + timedelta(seconds=1),
        receipt=None,
        prev_hash=head.hash,
        hash="",
        clearing_day=previous.clearing_day,
    )
    forged = seal(entry, key)
    if key is None:  # the forger copies a signature from another entry
        forged = forged.model_copy(update={"signature": previous.signature})
    assert hash_of(forged) == forged.hash
    success = PaymentSucceeded(
        payment_id="pay_forged",
        payer_id="u-mallory",
        amount=900_000,
        method="bank_card",
        purpose_type="wallet_topup",
        payee_name="零钱",
        payer_phone_masked="138****0000",
        payer_phone_sealed="x",
        journal_seq=forged.seq,
        receipt=None,
    )
    return [
        *log,
        ("ledger", new_event(forged, producer="ledger", key="u-mallory", correlation_id="p")),
        ("payments", new_event(success, producer="payment", key="u-mallory", correlation_id="p")),
    ]


def test_a_forged_entry_with_a_recomputed_hash_is_named() -> None:
    for key in (None, OTHER):  # a copied signature; the forger's own key
        auditor = audit(forged_payment(signed_journal(), key))
        assert kinds(auditor) == {"entry_signature"}, auditor.findings.kept
        found = first(auditor, "entry_signature")
        assert found.payment_id == "pay_forged" and "not written by the ledger" in found.message


def test_an_unsigned_entry_after_signing_began_is_named() -> None:
    log = forged_payment(signed_journal(), None)
    stripped = []
    for stream, env in log:
        if env.payload.get("payment_id") == "pay_forged" and stream == "ledger":
            env = env.model_copy(update={"payload": {**env.payload, "signature": None}})
        stripped.append((stream, env))
    found = first(audit(stripped), "entry_signature")
    assert "is not signed" in found.message


def test_the_last_payments_cut_off_both_topics_are_caught_by_a_checkpoint() -> None:
    log = signed_journal(80)
    anchor = checkpoint(log)  # e.g. the bureau's file of the day, or GET /v1/journal/checkpoint
    entries_at = [i for i, (_s, e) in enumerate(log) if e.event_type == "JournalEntryPosted"]
    cut = log[: entries_at[-CUT]]  # the last entries, their receipts and payments: gone
    assert audit(cut).findings.total == 0  # consistent with itself: nothing to see
    auditor = audit_with(cut, anchor)
    assert kinds(auditor) == {"checkpoint_unreached"}
    found = first(auditor, "checkpoint_unreached")
    assert f"entry {anchor.seq}" in found.message and "cut off" in found.message
    assert found.seq == anchor.seq


def test_a_rewritten_journal_misses_the_checkpoint_hash_and_a_forged_checkpoint_fails() -> None:
    log = signed_journal(40)
    anchor = checkpoint(log)
    moved = anchor.model_copy(update={"hash": "ab" * 32})
    auditor = audit_with(log, moved)
    assert kinds(auditor) == {"checkpoint_signature", "checkpoint_mismatch"}
    resigned = sign_checkpoint(LedgerHead(anchor.seq, "ab" * 32), _at(log), SIGNER)
    assert kinds(audit_with(log, resigned)) == {"checkpoint_mismatch"}
    assert kinds(audit_with(log, checkpoint(log, OTHER))) == {"checkpoint_signature"}
    assert audit_with(log, anchor).findings.total == 0


def test_an_altered_copy_keeping_the_old_hash_is_not_a_harmless_duplicate() -> None:
    log = signed_journal(30)
    i = [n for n, (s, e) in enumerate(log) if e.event_type == "JournalEntryPosted"][4]
    stream, env = log[i]
    lines = [dict(x) for x in env.payload["lines"]]
    lines[0]["amount"] -= 100
    lines[-1]["amount"] += 100
    altered = env.model_copy(update={"payload": {**env.payload, "lines": lines}})
    auditor = audit([*log, (stream, altered)])
    assert kinds(auditor) == {"duplicate_mismatch"}
    found = first(auditor, "duplicate_mismatch")
    assert found.seq == env.payload["seq"] and "hash does not recompute" in found.message
    assert audit([*log, (stream, env)]).counts.duplicates == 1  # a true redelivery


def audit_with(log: Log, *anchors: JournalCheckpoint) -> Auditor:
    auditor = Auditor(public_key=SIGNER.public_raw)
    auditor.settlement.given.extend((a, f"checkpoint seq {a.seq}") for a in anchors)
    auditor.mark_payments_read()
    for offset, (stream, env) in enumerate(log):
        event = Event(env, decode_payload(env))
        where = Where(f"{stream}.v1", 0, offset)
        (auditor.ledger if stream == "ledger" else auditor.payment)(event, where)
    auditor.finish()
    return auditor


def test_replay_with_checkpoint_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``yibao-audit replay --from FILE --checkpoint FILE``: holds, or fails naming it."""
    export = write_export(tmp_path / "journal.jsonl.gz")
    head = LedgerHead()
    with gzip.open(export, "rt") as lines:
        for line in lines:
            value = json.loads(line)["value"]
            if value["event_type"] == "JournalEntryPosted":
                head = LedgerHead(value["payload"]["seq"], value["payload"]["hash"])
    good, ahead = tmp_path / "good.json", tmp_path / "ahead.json"
    at = datetime(2026, 11, 30, tzinfo=UTC)
    good.write_text(sign_checkpoint(head, at, SIGNER).model_dump_json())
    ahead.write_text(
        sign_checkpoint(LedgerHead(head.seq + 3, "cd" * 32), at, SIGNER).model_dump_json()
    )
    base = ["replay", "--from", str(export), "--public-key", SIGNER.public_key_b64]
    assert main([*base, "--checkpoint", str(good)]) == 0
    assert "Result: CLEAN" in capsys.readouterr().out
    assert main([*base, "--checkpoint", str(ahead), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [found] = report["discrepancies"]
    assert found["kind"] == "checkpoint_unreached" and str(ahead) in found["message"]
    assert {c["name"]: c["status"] for c in report["checks"]}["checkpoints"] == "fail"
    (tmp_path / "junk.json").write_text("{}")
    assert main([*base, "--checkpoint", str(tmp_path / "junk.json")]) == 2
    assert main([*base, "--checkpoint", str(tmp_path / "missing.json")]) == 2


# ---------------------------------------------------------------------------
# Settlement in the log: closed days recompute, transfers and arrivals match
# ---------------------------------------------------------------------------


def closed_log(n: int = 40) -> tuple[Log, ClearingDayClosed, JournalEntryPosted]:
    """A signed journal of one clearing day, closed, its transfers arrived."""
    log = signed_journal(n)
    entries = [
        p
        for s, e in log
        if e.event_type == "JournalEntryPosted"
        and isinstance(p := decode_payload(e), JournalEntryPosted)
    ]
    day = date.fromisoformat(entries[0].clearing_day or "")
    assert {e.clearing_day for e in entries} == {day.isoformat()}
    closing = decide_close_day(
        head_of(log),
        day,
        entries,
        {},
        bank="devbank",
        closed_at=_at(log),
        forced=True,
        signer=SIGNER,
    )
    log = [*log, *(("ledger", env) for env in closing.events)]
    head = closing.head
    for entry in closing.entries:
        region = entry.payer_id
        t = Transfer(
            entry.payment_id, day, region, "devbank", f"bureau:{region}", entry.lines[1].amount
        )
        arrival, env = arrival_entry(
            head, t, confirmed_at=_at(log), posted_at=_at(log), clearing_day=day, signer=SIGNER
        )
        head = LedgerHead(arrival.seq, arrival.hash)
        log.append(("ledger", env))
    return log, closing.closed, closing.entries[0]


def test_a_closed_and_settled_day_audits_clean() -> None:
    log, closed, _entry = closed_log()
    assert len(closed.regions) >= 2 and all(r.transfer_amount > 0 for r in closed.regions)
    auditor = audit(log)
    assert auditor.findings.total == 0, auditor.findings.kept[:3]
    assert auditor.settlement.closed_days == 1
    for r in closed.regions:
        assert auditor.balances[f"cash:{r.region}:bureau"].balance == r.transfer_amount
        assert auditor.balances[f"cash:{r.region}:platform"].balance == 0


def test_a_close_whose_figures_do_not_recompute_is_named() -> None:
    log, closed, _entry = closed_log()
    i = next(n for n, (_s, e) in enumerate(log) if e.event_type == "ClearingDayClosed")
    regions = [dict(r) for r in log[i][1].payload["regions"]]
    regions[0]["paid"] += 100
    log[i] = (
        "ledger",
        log[i][1].model_copy(update={"payload": {**log[i][1].payload, "regions": regions}}),
    )
    found = first(audit(log), "clearing_day_mismatch")
    assert closed.day in found.message and regions[0]["region"] in found.message


def test_an_arrival_without_its_settlement_and_a_late_posting_are_named() -> None:
    log, closed, settlement_entry = closed_log()
    entries_at = [n for n, (_s, e) in enumerate(log) if e.event_type == "JournalEntryPosted"]
    without = [x for n, x in enumerate(log) if n != entries_at[-len(closed.regions) * 2]]
    assert "seq_gap" in kinds(audit(without))  # removing an entry breaks the chain anyway
    # A posting recorded on the closed day after its close (signed: a ledger bug).
    head = head_of(log)
    late = seal(
        settlement_entry.model_copy(
            update={
                "seq": head.seq + 1,
                "prev_hash": head.hash,
                "payment_id": "st_late",
                "kind": "settlement",
                "transaction_id": "00000000-0000-0000-0000-0000000000aa",
            }
        ),
        SIGNER,
    )
    log.append(("ledger", new_event(late, producer="ledger", key="x", correlation_id="st_late")))
    found = first(audit(log), "settlement_mismatch")
    assert "st_late" in found.message and "no ClearingDayClosed" in found.message


def test_a_premium_recorded_on_a_day_after_its_close_is_named() -> None:
    log, closed, _entry = closed_log()
    premium = next(
        p
        for _s, e in log
        if e.event_type == "JournalEntryPosted"
        and isinstance(p := decode_payload(e), JournalEntryPosted)
        and p.kind == "premium"
    )
    head = head_of(log)
    late = seal(
        premium.model_copy(
            update={
                "seq": head.seq + 1,
                "prev_hash": head.hash,
                "payment_id": "pay_late",
                "receipt": None,
                "transaction_id": "00000000-0000-0000-0000-0000000000bb",
            }
        ),
        SIGNER,
    )
    log.append(("ledger", new_event(late, producer="ledger", key="x", correlation_id="pay_late")))
    auditor = audit(log)  # forged without its PaymentSucceeded, too
    assert kinds(auditor) == {
        "posting_after_close",
        "clearing_day_mismatch",
        "posting_without_payment",
    }
    found = first(auditor, "posting_after_close")
    assert found.seq == late.seq and closed.day in found.message
