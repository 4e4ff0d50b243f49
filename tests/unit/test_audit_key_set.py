"""``yibao-audit`` accepts a key set (issue 11, keys rotate): a journal whose receipts
and entries were signed by an old key and then a new one verifies with the set, each
signature with the key its ``key_id`` names; a key missing from the set fails."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.ledger.audit.cli import main
from services.ledger.audit.export import ExportWriter
from services.ledger.audit.keys import parse_key_set
from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.run import UsageError
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.posting import PostingKeys
from services.ledger.signing import ALGORITHM, ReceiptSigner
from shared.events import Event, decode_payload, encode
from shared.topic_reader import RawRecord
from tests.unit.test_audit_checks import KEYS, OTHER, SIGNER, Log, audit, kinds

NEW = OTHER  # the key the ledger rotated to; SIGNER is the old one


def rotated_journal(before: int = 30, after: int = 30) -> Log:
    """Signed by SIGNER, then (rotated) by NEW, one chain."""
    journal = SyntheticJournal(KEYS, payers=6, seed=5, signed=True)
    log = list(journal.events(before))
    journal.keys = PostingKeys(check_key=KEYS.check_key, signer=NEW)
    return [*log, *journal.events(after)]


def key_set(*signers: ReceiptSigner, current: ReceiptSigner | None = None) -> list[dict[str, Any]]:
    return [
        {
            "key_id": s.key_id,
            "algorithm": ALGORITHM,
            "public_key": s.public_key_b64,
            "current": s is current,
        }
        for s in signers
    ]


def signer_ids(log: Log, event_type: str) -> set[str]:
    return {e.payload["key_id"] for _, e in log if e.event_type == event_type}


def audit_with_set(log: Log, *signers: ReceiptSigner) -> Auditor:
    auditor = Auditor(
        public_key=signers[0].public_raw, other_keys=tuple(s.public_raw for s in signers[1:])
    )
    auditor.mark_payments_read()
    for offset, (stream, env) in enumerate(log):
        event = Event(env, decode_payload(env))
        where = Where(f"{stream}.v1", 0, offset)
        (auditor.ledger if stream == "ledger" else auditor.payment)(event, where)
    auditor.finish()
    return auditor


def test_a_rotated_journal_verifies_with_both_keys() -> None:
    log = rotated_journal()
    assert signer_ids(log, "ReceiptIssued") == {SIGNER.key_id, NEW.key_id}
    assert signer_ids(log, "JournalEntryPosted") == {SIGNER.key_id, NEW.key_id}
    auditor = audit(log, key=NEW.public_raw)
    assert kinds(auditor) >= {"receipt_signature", "entry_signature"}  # the old key's part
    both = audit_with_set(log, NEW, SIGNER)
    assert both.findings.total == 0, both.findings.kept[:3]
    assert list(both.trusted) == [NEW.key_id, SIGNER.key_id]


def test_a_key_id_outside_the_set_fails_naming_it() -> None:
    log = rotated_journal()
    auditor = audit(log, key=SIGNER.public_raw)
    bad = [d for d in auditor.findings.kept if d.kind == "receipt_signature"]
    assert bad and all(f"it names key {NEW.key_id}" in d.message for d in bad)
    entries = [d for d in auditor.findings.kept if d.kind == "entry_signature"]
    assert entries and f"it names key {NEW.key_id}" in entries[0].message


def write_rotated_export(path: Path) -> Path:
    writer = ExportWriter(path)
    offsets = {"ledger": 0, "payments": 0}
    for stream, env in rotated_journal(25, 25):
        writer.add(RawRecord(f"t0.{stream}.v1", 0, offsets[stream], env.key.encode(), encode(env)))
        offsets[stream] += 1
    writer.seal(NEW, created_at=datetime(2026, 11, 23, tzinfo=UTC), topic_prefix="t0.")
    return path


def replay(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    code = main(["replay", "--from", str(path), "--json", "--progress-every", "0", *extra])
    return code, json.loads(capsys.readouterr().out)


def test_cli_public_key_repeated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = write_rotated_export(tmp_path / "journal.jsonl.gz")
    both = ("--public-key", NEW.public_key_b64, "--public-key", SIGNER.public_key_b64)
    code, report = replay(export, capsys, *both)
    assert code == 0, report["discrepancies"][:3]
    assert report["receipt_key"]["key_ids"] == [NEW.key_id, SIGNER.key_id]
    assert report["receipt_key"]["source"] == "pinned with --public-key"
    code, report = replay(export, capsys, "--public-key", NEW.public_key_b64)
    assert code == 1
    assert {"receipt_signature", "entry_signature"} <= set(report["discrepancies_by_kind"])


def test_cli_public_keys_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = write_rotated_export(tmp_path / "journal.jsonl.gz")
    keys = tmp_path / "public-keys.json"
    keys.write_text(json.dumps(key_set(SIGNER, NEW, current=NEW)))
    code, report = replay(export, capsys, "--public-keys", str(keys))
    assert code == 0, report["discrepancies"][:3]
    assert report["receipt_key"]["key_id"] == NEW.key_id  # the current key first
    assert str(keys) in report["receipt_key"]["source"]
    keys.write_text(json.dumps(key_set(NEW, current=NEW)))
    code, report = replay(export, capsys, "--public-keys", str(keys))
    assert code == 1 and report["discrepancies_by_kind"]["receipt_signature"] > 0


def test_cli_public_keys_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    export = write_rotated_export(tmp_path / "journal.jsonl.gz")
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, json=key_set(SIGNER, NEW, current=NEW))

    real = httpx.AsyncClient

    def client(**kw: Any) -> httpx.AsyncClient:
        return real(transport=httpx.MockTransport(handler), **kw)

    monkeypatch.setattr(httpx, "AsyncClient", client)
    code, report = replay(export, capsys, "--public-keys", "http://ledger.test:8003")
    assert code == 0, report["discrepancies"][:3]
    assert asked == ["http://ledger.test:8003/v1/receipts/public-keys"]
    assert "trusts that server" in report["receipt_key"]["source"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ([], "non-empty"),
        ({"key_id": "x"}, "non-empty"),
        ([{"key_id": "x"}], "is not"),
        ([{**key_set(SIGNER)[0], "algorithm": "RSA"}], "not Ed25519"),
        ([{**key_set(SIGNER)[0], "key_id": NEW.key_id}], "says key_id"),
        ([{**key_set(SIGNER)[0], "public_key": "c2hvcnQ"}], "32 bytes"),
    ],
)
def test_a_wrong_key_set_is_refused(body: Any, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        parse_key_set(body, "keys.json")


def test_a_wrong_key_set_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = write_rotated_export(tmp_path / "journal.jsonl.gz")
    keys = tmp_path / "keys.json"
    keys.write_text("not json")
    assert main(["replay", "--from", str(export), "--public-keys", str(keys)]) == 2
    assert "is not JSON" in capsys.readouterr().err
