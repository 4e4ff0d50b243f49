"""``yibao-dlq`` and ``yibao-audit`` follow CLI conventions (issue 14): --version,
options before or after the command, an unknown topic is an error naming the topics,
no secret on the command line, and rebuild asks first (or --yes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from services.ledger.audit import cli as audit
from shared import dlq


@pytest.mark.parametrize(("main", "prog"), [(dlq.main, "yibao-dlq"), (audit.main, "yibao-audit")])
def test_version(main: object, prog: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])  # type: ignore[operator]
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"{prog} ")


def test_dlq_unknown_topic_is_an_error_naming_the_topics(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        dlq.main(["--bootstrap", "127.0.0.1:1", "list", "payment.v1"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "unknown topic 'payment.v1'" in err
    for topic in ("payments.v1", "risk.v1", "ledger.v1", "notify.v1", "person-keys.v1"):
        assert topic in err


def test_dlq_options_in_any_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "env:1")
    monkeypatch.delenv("YIBAO_TOPIC_PREFIX", raising=False)
    orders = [
        ["--bootstrap", "b:1", "--topic-prefix", "t.", "replay", "risk.v1", "--offset", "3"],
        ["replay", "--offset", "3", "risk.v1", "--topic-prefix", "t.", "--bootstrap", "b:1"],
        ["--topic-prefix", "t.", "replay", "--bootstrap", "b:1", "risk.v1", "--offset", "3"],
    ]
    for argv in orders:
        args = dlq._defaults(dlq._parser().parse_args(argv))
        assert (args.bootstrap, args.topic_prefix, args.topic, args.offset) == (
            "b:1",
            "t.",
            "risk.v1",
            [3],
        ), argv
    args = dlq._defaults(dlq._parser().parse_args(["list", "ledger.v1"]))
    assert (args.bootstrap, args.topic_prefix) == ("env:1", "")


def test_audit_options_in_any_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("YIBAO_KAFKA_BOOTSTRAP", raising=False)
    for argv in (
        ["--bootstrap", "b:1", "--progress-every", "0", "replay", "--json"],
        ["replay", "--json", "--progress-every", "0", "--bootstrap", "b:1"],
    ):
        args = audit._defaults(audit.build_parser().parse_args(argv))
        assert (args.bootstrap, args.progress_every, args.json) == ("b:1", 0, True), argv
    args = audit._defaults(audit.build_parser().parse_args(["replay"]))
    assert (args.bootstrap, args.progress_every) == ("127.0.0.1:59092", 100_000)


@pytest.mark.parametrize(
    ("argv", "instead"),
    [
        (["replay", "--api-key", "k-secret"], "set OPERATOR_API_KEY or pass --api-key-file FILE"),
        (
            ["replay", "--signing-key", "seed"],
            "set YIBAO_RECEIPT_SIGNING_KEY or pass --signing-key-file FILE",
        ),
        (
            ["export", "--out", "x.gz", "--signing-key", "seed"],
            "set YIBAO_RECEIPT_SIGNING_KEY or pass --signing-key-file FILE",
        ),
        (["rebuild", "--yes", "--ledger-dsn", "postgresql://u:pw@h/db"], "PGPASSWORD"),
        (["replay", "--ledger-dsn", "host=h password=pw dbname=d"], "PGPASSWORD"),
    ],
)
def test_audit_refuses_a_secret_on_the_command_line(
    argv: list[str], instead: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        audit.main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert instead in err
    assert "pw" not in err.replace("PGPASSWORD", "").replace("passfile", "")


def test_audit_reads_secrets_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tmp_path / "key"
    key.write_text("k-from-file\n")
    args = audit._defaults(audit.build_parser().parse_args(["replay", "--api-key-file", str(key)]))
    assert args.api_key == "k-from-file"
    monkeypatch.delenv("OPERATOR_API_KEY", raising=False)
    monkeypatch.setenv("API_KEY", "k-from-env")
    args = audit._defaults(audit.build_parser().parse_args(["replay"]))
    assert args.api_key == "k-from-env"
    monkeypatch.setenv("OPERATOR_API_KEY", "k-operator")  # comparing every balance: first
    args = audit._defaults(audit.build_parser().parse_args(["replay"]))
    assert args.api_key == "k-operator"
    seed = tmp_path / "seed"
    seed.write_text("c2VlZA==\n")
    parsed = audit.build_parser().parse_args(
        ["export", "--out", "x", "--signing-key-file", str(seed)]
    )
    assert audit._defaults(parsed).signing_key == "c2VlZA=="
    assert audit.main(["replay", "--api-key-file", str(tmp_path / "missing")]) == 2


def test_rebuild_asks_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = "postgresql://postgres@127.0.0.1:1/none"
    # No terminal and no --yes: refused before anything is touched.
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert audit.main(["rebuild", "--ledger-dsn", dsn]) == 2
    assert "pass --yes to confirm" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # At a terminal, anything but "rebuild" changes nothing.
    monkeypatch.setattr("sys.stdin", Terminal("no\n"))
    assert audit.main(["rebuild", "--ledger-dsn", dsn]) == 2
    captured = capsys.readouterr()
    assert "type 'rebuild' to go on" in captured.out
    assert "not confirmed: nothing changed" in captured.err
    # Confirmed, it goes on (and fails on the unreachable database: exit 2, not asked).
    monkeypatch.setattr("sys.stdin", Terminal("rebuild\n"))
    assert audit.main(["rebuild", "--ledger-dsn", dsn, "--bootstrap", "127.0.0.1:1"]) == 2
    assert "not confirmed" not in capsys.readouterr().err
