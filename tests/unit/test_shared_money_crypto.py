"""Money formatting, the cap's day, sealing and keyed hashes."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime

import pytest

from shared.crypto import Sealer, SealError, keyed_hash, parse_key
from shared.money import chinese_capitals, format_cny, shanghai_day


@pytest.mark.parametrize(
    ("fen", "words"),
    [
        (38000, "叁佰捌拾元整"),
        (5000000, "伍万元整"),
        (10005, "壹佰元零伍分"),
        (100010000, "壹佰万零壹佰元整"),
        (110, "壹元壹角整"),
        (12, "壹角贰分"),
        (0, "零元整"),
        (79500, "柒佰玖拾伍元整"),
        (100000001, "壹佰万元零壹分"),
    ],
)
def test_chinese_capitals(fen: int, words: str) -> None:
    assert chinese_capitals(fen) == words


def test_format_cny() -> None:
    assert format_cny(5_000_000) == "50,000.00"
    assert format_cny(1) == "0.01"
    assert format_cny(-150) == "-1.50"


def test_shanghai_day_turns_at_16_utc() -> None:
    assert shanghai_day(datetime(2026, 11, 23, 15, 59, 59, tzinfo=UTC)) == date(2026, 11, 23)
    assert shanghai_day(datetime(2026, 11, 23, 16, 0, 0, tzinfo=UTC)) == date(2026, 11, 24)
    with pytest.raises(ValueError, match="naive"):
        shanghai_day(datetime(2026, 11, 23))  # noqa: DTZ001 - the naive case under test


def test_sealing_binds_to_its_record() -> None:
    sealer = Sealer(os.urandom(32))
    token = sealer.seal("13800138000", aad="phone:pay_1")
    assert "13800138000" not in token
    assert sealer.open(token, aad="phone:pay_1") == "13800138000"
    with pytest.raises(SealError):
        sealer.open(token, aad="phone:pay_2")
    with pytest.raises(SealError):
        Sealer(os.urandom(32)).open(token, aad="phone:pay_1")


def test_keyed_hash_is_unambiguous() -> None:
    key = os.urandom(32)
    assert keyed_hash(key, "ab", "c") != keyed_hash(key, "a", "bc")
    assert keyed_hash(key, "x") == keyed_hash(key, "x")


def test_parse_key_checks_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        parse_key("c2hvcnQ")
