"""The rebuild without checks (``yibao-audit replay --no-checks``) reaches the head,
balances and receipts the checked replay rebuilds, from messages and from an export."""

from __future__ import annotations

import asyncio
import gzip
import json
from pathlib import Path

import pytest

from services.ledger.audit.cli import main
from services.ledger.audit.model import Where
from services.ledger.audit.rules import Auditor
from services.ledger.audit.run import Progress, run_unchecked
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.audit.unchecked import Projection
from shared.events import Envelope, Event, decode, decode_payload, encode
from tests.unit.test_audit_checks import KEYS, SIGNER
from tests.unit.test_audit_export import write_export


def checked(log: list[tuple[str, bytes]]) -> Auditor:
    auditor = Auditor(public_key=SIGNER.public_raw)
    for offset, (stream, raw) in enumerate(log):
        if stream == "ledger":
            auditor.ledger(decode(raw), Where("t.ledger.v1", 0, offset))
    auditor.finish()
    return auditor


def test_the_unchecked_fold_reaches_the_checked_state() -> None:
    journal = SyntheticJournal(KEYS, payers=6, seed=9, signed=True, money_from_outside=True)
    log = [(stream, encode(env)) for stream, env in journal.events(150)]
    ledger = [raw for stream, raw in log if stream == "ledger"]
    auditor = checked(log)
    projection = Projection().fold([*ledger, ledger[3]])  # and one redelivered
    assert (projection.seq, projection.hash) == (auditor.head.seq, auditor.head.hash)
    assert projection.balances == {a: b.balance for a, b in auditor.balances.items()}
    assert projection.receipts == set(auditor.receipts)
    assert projection.next_receipt_numbers == dict(auditor.head.next_receipt_numbers)
    assert (projection.redelivered, projection.unreadable) == (1, 0)
    assert projection.events == len(ledger) + 1


def test_an_unreadable_message_is_counted_and_skipped() -> None:
    projection = Projection().fold([b"not json", None, b'{"event_type": "X", "payload": {}}'])
    assert (projection.events, projection.unreadable, projection.seq) == (3, 2, 0)


def test_an_export_rebuilds_unchecked_and_the_cli_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_export(tmp_path / "j.jsonl.gz", n=60)
    projection, _seconds = asyncio.run(run_unchecked(progress=Progress(every=0), file=path))
    auditor = Auditor(public_key=SIGNER.public_raw)
    with gzip.open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            record = json.loads(line)
            if record["topic"].endswith("ledger.v1"):
                env = Envelope.model_validate(record["value"])
                auditor.ledger(Event(env, decode_payload(env)), Where(line=number))
    assert (projection.seq, projection.hash) == (auditor.head.seq, auditor.head.hash)
    assert projection.balances == {a: b.balance for a, b in auditor.balances.items()}

    assert main(["replay", "--no-checks", "--from", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checked"] is False
    assert out["head"] == {"seq": auditor.head.seq, "hash": auditor.head.hash}
    assert out["balances_sum"] == 0
    assert main(["replay", "--no-checks", "--from", str(path)]) == 0
    assert "NOT CHECKED" in capsys.readouterr().out


def test_export_lines_are_counted_the_same_whichever_way_they_are_read() -> None:
    """An export line whose value is an envelope is read in one pass; any other line
    the slow way, with the same counts: another topic's line is skipped whatever its
    value, a ledger.v1 line that is not an envelope is an unreadable event."""
    projection = Projection()
    for line in (
        b'{"topic": "t.payments.v1", "value": {"event_type": "PaymentSucceeded", "payload": {}}}',
        b'{"topic": "t.payments.v1", "value": "not an envelope"}',
        b'{"topic": "t.ledger.v1", "value": {"event_type": "SettlementOpened", "payload": {}}}',
        b'{"topic": "t.ledger.v1", "value": {"payload": {}}}',
        b'{"topic": "t.ledger.v1"}',
        b"not json",
    ):
        projection.export_line(line)
    assert (projection.events, projection.unreadable, projection.seq) == (4, 3, 0)
