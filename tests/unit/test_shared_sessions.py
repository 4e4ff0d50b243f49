"""Records-session tokens: bound to caller, payer and expiry; forged or moved ones fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.sessions import issue_records_session, records_session_valid

KEY = b"k" * 32
NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _token(**over: object) -> str:
    args: dict[str, object] = {
        "caller": "c1",
        "payer_id": "u-1",
        "expires_at": NOW + timedelta(minutes=10),
    }
    args.update(over)
    return issue_records_session(KEY, **args)  # type: ignore[arg-type]


def test_a_token_is_valid_for_its_caller_and_payer_until_it_expires() -> None:
    token = _token()
    assert records_session_valid(KEY, token, caller="c1", payer_id="u-1", now=NOW)
    later = NOW + timedelta(minutes=10)
    assert not records_session_valid(KEY, token, caller="c1", payer_id="u-1", now=later)


def test_a_token_does_not_move_to_another_payer_caller_or_key() -> None:
    token = _token()
    assert not records_session_valid(KEY, token, caller="c2", payer_id="u-1", now=NOW)
    assert not records_session_valid(KEY, token, caller="c1", payer_id="u-2", now=NOW)
    assert not records_session_valid(b"x" * 32, token, caller="c1", payer_id="u-1", now=NOW)


def test_a_stretched_or_malformed_token_fails() -> None:
    version, expires, nonce, mac = _token().split(".")
    stretched = f"{version}.{int(expires) + 3600}.{nonce}.{mac}"
    for bad in (stretched, "", "rs1", "rs1.x.y.z", f"rs2.{expires}.{nonce}.{mac}", "rs1.٣.a.b"):
        assert not records_session_valid(KEY, bad, caller="c1", payer_id="u-1", now=NOW)
