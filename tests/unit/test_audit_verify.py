"""The replay's parallel checks (services/ledger/audit/verify.py) give the fold exactly the
answers it would compute itself: on a clean signed journal, on damaged and oddly written
messages, through the process pool and in this process, the report is the same."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.run import Progress, _keys, replay_file
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.audit.verify import (
    ENTRY_FIELDS,
    Keys,
    Verifier,
    canonical,
    check_batch,
    check_message,
    entry_is_canonical,
    signature_ok,
)
from services.ledger.signing import key_id_of, verify_bytes
from shared.canonical import canonical_bytes
from shared.errors import UndecodableEvent
from shared.events import JournalEntryPosted, decode, encode
from tests.unit.test_audit_checks import KEYS, OTHER, SIGNER
from tests.unit.test_audit_export import write_export

Raw = list[tuple[str, bytes]]


def signed_log(n: int = 80) -> Raw:
    journal = SyntheticJournal(KEYS, payers=6, seed=5, signed=True, money_from_outside=True)
    return [(stream, encode(env)) for stream, env in journal.events(n)]


def fold(log: Raw, *, checked: bool) -> Auditor:
    """The replay's fold of ``log``, with the workers' answers or computing everything."""
    auditor = Auditor(public_key=SIGNER.public_raw, other_keys=(OTHER.public_raw,))
    auditor.mark_payments_read()
    keys = _keys(auditor)
    for offset, (stream, raw) in enumerate(log):
        where = Where(f"t.{stream}.v1", 0, offset)
        try:
            event = decode(raw)
        except UndecodableEvent as exc:
            auditor.undecodable(where, str(exc))
            continue
        if stream == "ledger":
            auditor.ledger(event, where, check_message(raw, keys) if checked else None)
        else:
            auditor.payment(event, where)
    auditor.finish()
    return auditor


def assert_same(a: Auditor, b: Auditor) -> None:
    assert a.findings.kept == b.findings.kept
    assert a.findings.counts == b.findings.counts
    assert (a.head, a.balances, a.receipts) == (b.head, b.balances, b.receipts)
    assert a.statement_digest() == b.statement_digest()
    assert (a._hashes, a._digests) == (b._hashes, b._digests)


def edit(log: Raw, event_type: str, change: Callable[[dict[str, Any]], None], nth: int = 0) -> Raw:
    """``log`` with the ``nth`` message of ``event_type`` rewritten as raw JSON (not
    re-encoded by the model, so odd forms stay odd)."""
    out, seen = list(log), -1
    for i, (stream, raw) in enumerate(out):
        envelope = json.loads(raw)
        if envelope["event_type"] == event_type:
            seen += 1
            if seen == nth:
                change(envelope["payload"])
                out[i] = (stream, json.dumps(envelope, ensure_ascii=False).encode())
                return out
    raise AssertionError(f"no {event_type} #{nth}")


def _set(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda p: p.__setitem__(name, value)


def _face(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    return lambda p: p["receipt"].__setitem__(name, value)


def _offset_time(p: dict[str, Any]) -> None:
    p["posted_at"] = p["posted_at"].replace("Z", "+00:00")  # same instant, other text


def _float_amount(p: dict[str, Any]) -> None:
    p["lines"][0]["amount"] = float(p["lines"][0]["amount"])


def _no_currency(p: dict[str, Any]) -> None:
    del p["currency"]  # the default, CNY: validates, hashes as before


def _other_signature(p: dict[str, Any]) -> None:
    p["signature"] = base64.b64encode(OTHER.sign(p["hash"].encode())).decode()


DAMAGE: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "entry amount changed": ("JournalEntryPosted", lambda p: p["lines"][0].update(amount=1)),
    "entry time with an offset": ("JournalEntryPosted", _offset_time),
    "entry amount as a float": ("JournalEntryPosted", _float_amount),
    "entry without its default currency": ("JournalEntryPosted", _no_currency),
    "entry signature garbled": ("JournalEntryPosted", _set("signature", "AAAA")),
    "entry signature not base64": ("JournalEntryPosted", _set("signature", "!!")),
    "entry signed by another key": ("JournalEntryPosted", _other_signature),
    "entry naming an unknown key": ("JournalEntryPosted", _set("key_id", "0123456789abcdef")),
    "entry unsigned": ("JournalEntryPosted", _set("signature", None)),
    "entry with a number for its hash": ("JournalEntryPosted", _set("hash", 5)),
    "entry with an extra field": ("JournalEntryPosted", _set("extra", 1)),
    "receipt total changed": ("ReceiptIssued", _face("total", 1)),
    "receipt face without a code": ("ReceiptIssued", lambda p: p["receipt"].pop("code")),
    "receipt signature garbled": ("ReceiptIssued", _set("signature", "AAAA")),
    "receipt naming an unknown key": ("ReceiptIssued", _set("key_id", "0123456789abcdef")),
    "receipt journal seq as text": ("ReceiptIssued", _set("journal_seq", "7")),
}


def test_a_clean_signed_journal_folds_the_same_and_every_answer_comes_from_the_worker() -> None:
    log = signed_log()
    keys = _keys(Auditor(public_key=SIGNER.public_raw))
    answers = [check_message(raw, keys) for stream, raw in log if stream == "ledger"]
    entries_and_receipts = [a for a in answers if a is not None]
    assert entries_and_receipts, "the journal has entries and receipts"
    assert all(a.signed for a in entries_and_receipts)
    assert all(a.hash is not None or a.digest is not None for a in entries_and_receipts)
    a, b = fold(log, checked=True), fold(log, checked=False)
    assert a.findings.total == 0
    assert_same(a, b)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_and_odd_forms_give_the_same_report(case: str) -> None:
    event_type, change = DAMAGE[case]
    log = edit(signed_log(), event_type, change, nth=2)
    assert_same(fold(log, checked=True), fold(log, checked=False))


def test_a_redelivered_or_altered_copy_is_judged_the_same() -> None:
    log = signed_log()
    ledger = [(s, raw) for s, raw in log if s == "ledger"]
    again = [*log, ledger[0], ledger[1]]
    assert_same(fold(again, checked=True), fold(again, checked=False))
    altered = edit([ledger[0]], "JournalEntryPosted", _set("payer_id", "x"))
    twice = [*log, *altered]
    a = fold(twice, checked=True)
    assert "duplicate_mismatch" in a.findings.counts or "seq_fork" in a.findings.counts
    assert_same(a, fold(twice, checked=False))


def test_the_exact_form_check_covers_every_field_of_an_entry() -> None:
    assert set(JournalEntryPosted.model_fields) == ENTRY_FIELDS
    for _stream, raw in signed_log():
        event = decode(raw)
        if isinstance(event.payload, JournalEntryPosted):
            payload = json.loads(raw)["payload"]
            assert entry_is_canonical(payload)
            assert payload == event.payload.model_dump(mode="json")


def test_libsodium_only_confirms_what_openssl_accepts() -> None:
    message = b"a" * 64
    good = SIGNER.sign(message)
    key = SIGNER.public_raw
    order = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(good[32:], "little")
    noncanonical = good[:32] + (s + order).to_bytes(32, "little")  # S >= L
    cases = [
        good,
        bytes(64),
        good[:-1],
        good[:10] + bytes([good[10] ^ 1]) + good[11:],
        noncanonical,
        OTHER.sign(message),
    ]
    for signature in cases:
        b64 = base64.b64encode(signature).decode()
        assert signature_ok(message, b64, key) == verify_bytes(message, b64, key)
    small_order = bytes(32)  # a small-order point: libsodium refuses it outright
    b64 = base64.b64encode(good).decode()
    assert signature_ok(message, b64, small_order) == verify_bytes(message, b64, small_order)
    assert signature_ok(message, None, key) is False


def test_the_pool_answers_in_order_and_equals_this_process() -> None:
    log = signed_log(60)
    ledger = [raw for stream, raw in log if stream == "ledger"]
    keys = Keys(SIGNER.public_raw, {key_id_of(SIGNER.public_raw): SIGNER.public_raw})
    batches = [ledger[i : i + 7] for i in range(0, len(ledger), 7)]
    with Verifier(keys, workers=2, min_batch=1) as pool:
        pooled = [results for _batch, results in pool.map(batches, check_batch)]
    assert pooled == [check_batch(keys, b) for b in batches]


def test_an_export_replays_the_same_through_the_pool(tmp_path: Path) -> None:
    path = write_export(tmp_path / "j.jsonl.gz", n=120)

    def replay(**kw: int) -> Auditor:
        auditor = Auditor(public_key=SIGNER.public_raw)
        replay_file(auditor, path, Progress(every=0), **kw)
        auditor.finish()
        return auditor

    pooled = replay(workers=2, batch=16)
    assert pooled.findings.total == 0
    assert_same(pooled, replay(batch=100_000))


def test_a_key_cryptography_made_verifies_with_libsodium() -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = base64.b64encode(private.sign(b"m")).decode()
    assert signature_ok(b"m", signature, public)


JSON_WITHOUT_FLOATS = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(JSON_WITHOUT_FLOATS)
def test_the_fast_canonical_json_is_shared_canonicals_byte_for_byte(value: object) -> None:
    try:
        expected = canonical_bytes(value)
    except UnicodeEncodeError:  # a lone surrogate: canonical JSON cannot encode it either
        with pytest.raises(UnicodeEncodeError):
            canonical(value)
        return
    assert canonical(value) == expected


def test_floats_take_the_standard_encoder() -> None:
    for value in ({"a": 1e16}, [0.1, 1.0, 5e-324], {"x": [1, {"y": 2.5}]}):
        assert canonical(value) == canonical_bytes(value)
