"""``yibao-audit replay --from FILE``: offline replay of a signed export, and tampering.

The export files here are written by the real ``ExportWriter`` from a synthetic log
(postings decided by the ledger's own rules); no Kafka or database is needed, which
is the point of ``--from``.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.ledger.audit.cli import main
from services.ledger.audit.export import (
    ExportWriter,
    Tally,
    file_sha256,
    manifest_path,
    sign_manifest,
)
from services.ledger.audit.synthetic import SyntheticJournal
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import sign_face
from services.ledger.signing import ReceiptSigner
from shared.events import encode
from shared.topic_reader import RawRecord
from tests.unit.test_audit_checks import KEYS, OTHER, SIGNER

PUBLIC = SIGNER.public_key_b64
Lines = list[dict[str, Any]]


def write_export(
    path: Path, n: int = 80, signer: ReceiptSigner = SIGNER, keys: PostingKeys = KEYS
) -> Path:
    writer = ExportWriter(path)
    offsets = {"ledger": 0, "payments": 0}
    for stream, env in SyntheticJournal(keys, payers=6, seed=3).events(n):
        topic = f"t0.{stream}.v1"
        writer.add(RawRecord(topic, 0, offsets[stream], env.key.encode(), encode(env)))
        offsets[stream] += 1
    writer.seal(
        signer,
        created_at=datetime(2026, 11, 23, tzinfo=UTC),
        topic_prefix="t0.",
        receipt_public_key=signer.public_raw,
    )
    return path


def read_lines(path: Path) -> Lines:
    with gzip.open(path, "rb") as f:
        return [json.loads(line) for line in f]


def rewrite(
    path: Path, change: Callable[[Lines], None], *, reseal_with: ReceiptSigner | None = None
) -> None:
    """Edit the data file; with ``reseal_with``, also forge a matching manifest."""
    lines = read_lines(path)
    change(lines)
    with gzip.open(path, "wb") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    if reseal_with is not None:
        mpath = manifest_path(path)
        manifest = json.loads(mpath.read_text())
        tally = Tally()
        for line in lines:
            tally.add(line["topic"], line["partition"], line["offset"])
        manifest.update(
            sha256=file_sha256(path),
            bytes=path.stat().st_size,
            topics=tally.to_json(),
            public_key=reseal_with.public_key_b64,
            key_id=reseal_with.key_id,
            receipt_public_key=reseal_with.public_key_b64,
        )
        mpath.write_text(json.dumps(sign_manifest(manifest, reseal_with)))


def replay(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    code = main(["replay", "--from", str(path), "--json", "--progress-every", "0", *extra])
    return code, json.loads(capsys.readouterr().out)


def found(report: Any, kind: str) -> list[dict[str, Any]]:
    return [d for d in report["discrepancies"] if d["kind"] == kind]


def nth(lines: Lines, event_type: str, n: int) -> int:
    return [i for i, x in enumerate(lines) if x["value"]["event_type"] == event_type][n]


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_export(tmp_path / "journal.jsonl.gz")


def test_clean_export_replays_offline(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["replay", "--from", str(export), "--public-key", PUBLIC, "--progress-every", "25"])
        == 0
    )
    out = capsys.readouterr()
    assert "Result: CLEAN" in out.out
    assert "pinned with --public-key" in out.out
    assert "signed by a trusted key" in out.out
    assert "events/s" in out.err  # progress on stderr
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 0
    assert report["clean"] is True
    assert {c["name"]: c["status"] for c in report["checks"]}["payments"] == "ok"
    assert {c["name"]: c["status"] for c in report["checks"]}["live"] == "not_run"
    assert report["counts"]["receipts"] == report["receipts"] > 0
    manifest = json.loads(manifest_path(export).read_text())
    assert manifest["sha256"] == file_sha256(export)
    assert set(manifest["topics"]) == {"t0.ledger.v1", "t0.payments.v1"}
    assert manifest["topics"]["t0.ledger.v1"]["partitions"]["0"]["first_offset"] == 0


def test_changed_amount_fails_and_names_the_entry(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = read_lines(export)
    i = nth(lines, "JournalEntryPosted", 5)
    target = lines[i]["value"]

    def change(ls: Lines) -> None:
        ls[i]["value"]["payload"]["lines"][3]["amount"] += 1

    rewrite(export, change)
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    assert found(report, "manifest_sha256")
    altered = found(report, "hash_mismatch")[0]
    assert altered["seq"] == target["payload"]["seq"]
    assert altered["event_id"] == target["event_id"]
    assert altered["where"] == {
        "topic": "t0.ledger.v1",
        "partition": 0,
        "offset": lines[i]["offset"],
        "line": i + 1,
    }
    assert found(report, "unbalanced")[0]["seq"] == target["payload"]["seq"]
    # The text report names the event too.
    assert main(["replay", "--from", str(export), "--public-key", PUBLIC]) == 1
    text = capsys.readouterr().out
    assert f"seq {target['payload']['seq']}" in text
    assert target["event_id"] in text


def test_insider_with_the_key_still_cannot_change_an_amount(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = read_lines(export)
    i = nth(lines, "JournalEntryPosted", 2)

    def change(ls: Lines) -> None:
        ls[i]["value"]["payload"]["lines"][0]["amount"] -= 5

    rewrite(export, change, reseal_with=SIGNER)
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    assert not found(report, "manifest_sha256")
    assert not found(report, "manifest_signature")
    assert found(report, "hash_mismatch")[0]["event_id"] == lines[i]["value"]["event_id"]


def test_deleted_event_fails_and_names_the_gap(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = read_lines(export)
    i = nth(lines, "JournalEntryPosted", 4)
    seq = lines[i]["value"]["payload"]["seq"]
    rewrite(export, lambda ls: ls.pop(i), reseal_with=SIGNER)
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    gap = found(report, "seq_gap")[0]
    assert gap["seq"] == seq + 1
    assert gap["event_id"] == next(
        x["value"]["event_id"]
        for x in lines[i + 1 :]
        if x["value"]["event_type"] == "JournalEntryPosted"
    )
    assert (
        found(report, "payment_not_posted")[0]["payment_id"]
        == (lines[i]["value"]["correlation_id"])
    )


def test_receipt_resigned_with_another_key_fails(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = read_lines(export)
    i = nth(lines, "ReceiptIssued", 2)

    def change(ls: Lines) -> None:
        payload = ls[i]["value"]["payload"]
        payload["receipt"]["total_in_words"] = "玖佰玖拾玖元整"
        payload["signature"] = sign_face(payload["receipt"], OTHER)
        payload["key_id"] = OTHER.key_id

    rewrite(export, change, reseal_with=OTHER)  # the forger signs the manifest, too
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    bad = found(report, "receipt_signature")
    assert [d["event_id"] for d in bad] == [lines[i]["value"]["event_id"]]
    assert bad[0]["seq"] == lines[i]["value"]["payload"]["journal_seq"]
    # Pinning the manifest key catches the forged manifest as well.
    code, report = replay(export, capsys, "--public-key", PUBLIC, "--manifest-key", PUBLIC)
    assert found(report, "manifest_signature")
    # Trusting the (forged) manifest's own key proves only self-consistency, and the
    # report says so; here the genuine receipts then fail instead of the forged one.
    code, report = replay(export, capsys)
    assert code == 1
    assert "self-attested" in report["receipt_key"]["source"]
    assert report["discrepancies_by_kind"]["receipt_signature"] == report["receipts"] - 1


def test_manifest_sha_mismatch_is_detected(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with export.open("ab") as f:
        f.write(gzip.compress(b""))  # a valid empty gzip member: same records, other bytes
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    assert [d["kind"] for d in report["discrepancies"]] == ["manifest_sha256"]


def test_edited_manifest_is_detected(export: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mpath = manifest_path(export)
    manifest = json.loads(mpath.read_text())
    manifest["created_at"] = "2020-01-01T00:00:00Z"
    mpath.write_text(json.dumps(manifest))
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    assert found(report, "manifest_signature")


def test_corrupt_data_file_is_a_discrepancy(
    export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = bytearray(export.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    export.write_bytes(bytes(raw))
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    assert found(report, "manifest_sha256")


def _deflate_start(gz: bytes) -> int:
    """Where a gzip member's compressed data begins (RFC 1952: the header's optional
    extra field, file name and comment come first)."""
    flags, at = gz[3], 10
    if flags & 4:
        at += 2 + int.from_bytes(gz[at : at + 2], "little")
    for flag in (8, 16):
        if flags & flag:
            at = gz.index(0, at) + 1
    return at + (2 if flags & 2 else 0)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "first block"])
def test_a_damaged_data_file_is_read_up_to_the_damage_and_said(
    export: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Read by ISA-L in a thread of its own: gzip damage still surfaces where it is,
    as the checked replay's finding and as the rebuild's usage error, never a crash
    (each damage raises another kind of error)."""
    raw = bytearray(export.read_bytes())
    if damage == "truncated":  # EOFError
        raw = raw[: len(raw) * 2 // 3]
    elif damage == "first block":  # ISA-L's own error: an invalid deflate stream
        raw[_deflate_start(raw)] ^= 0xFF
    else:  # a CRC mismatch (BadGzipFile, an OSError)
        for at in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[at] ^= 0xFF
    export.write_bytes(bytes(raw))
    code, report = replay(export, capsys, "--public-key", PUBLIC)
    assert code == 1
    corrupt = [d for d in found(report, "undecodable") if "data file is corrupt" in d["message"]]
    assert len(corrupt) == 1
    assert found(report, "manifest_sha256")
    assert main(["replay", "--from", str(export), "--no-checks"]) == 2
    assert "the data file is corrupt and cannot be read on" in capsys.readouterr().err


def test_usage_errors_exit_2(
    tmp_path: Path, export: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", "--from", str(tmp_path / "none.gz")]) == 2
    assert main(["replay", "--from", str(export), "--public-key", "not-a-key"]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["replay", "--no-such-flag"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    assert helped.value.code == 0
    text = capsys.readouterr().out
    for words in ("replay", "export", "exit codes", "--public-key", "self-attested"):
        assert words in text
