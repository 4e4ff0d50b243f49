"""A journal exported by the ledger as it was before issue 8 and 9 still audits CLEAN.

``tests/fixtures/journal-v1.jsonl.gz`` (+ its signed manifest and the receipt public
key) was written once with the code at commit 0d61f31, before the issue 9 contracts
(JournalEntryPosted v1 envelopes; the synthetic journal: top-ups,
premiums with signed receipts, an overdraft rejection; recipe in
``journal-v1.make.py.txt``) and is never regenerated. Replaying it offline with today's
code proves that entry hashes, receipt signatures and the rebuilt projection stay
byte-identical through the refactor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.ledger.audit.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JOURNAL = FIXTURES / "journal-v1.jsonl.gz"
PUBLIC_KEY = (FIXTURES / "journal-v1.public-key").read_text().strip()

# What the pre-change code reported for this file.
HEAD_HASH = "1da85c59adc10962058ee6d3f6b79f72f52fd77de7b66315c5fde596ee985e37"
STATEMENT_SHA256 = "0e611e74d0a019ccc496c3eb0b5db201b82a88ff460a0765aaba6c9dfa16dc07"


def test_frozen_v1_journal_replays_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "replay",
            "--from",
            str(JOURNAL),
            "--public-key",
            PUBLIC_KEY,
            "--manifest-key",
            PUBLIC_KEY,
            "--json",
            "--progress-every",
            "0",
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report["discrepancies"][:5]
    assert report["clean"] is True
    expected_counts = {
        "ledger_events": 301,
        "entries": 173,
        "receipts": 127,
        "rejections": 1,
        "duplicates": 0,
        "payment_events": 174,
        "successes": 173,
        "undecodable": 0,
    }
    assert {k: report["counts"][k] for k in expected_counts} == expected_counts
    assert report["head"] == {"seq": 173, "hash": HEAD_HASH}
    assert report["accounts"] == 17
    assert report["receipts"] == 127
    assert report["statement_sha256"] == STATEMENT_SHA256
