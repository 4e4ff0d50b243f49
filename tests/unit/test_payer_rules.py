"""Enrolled payers (issue 11): masked names, whom the daily cap follows, what a second
enrolment may not change."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.payment.payer_domain import cap_identity, enrolment_conflict, mask_name
from shared.events import Relation


@pytest.mark.parametrize(
    ("name", "masked"),
    [("张三", "张*"), ("欧阳娜娜", "欧***"), ("李", "李"), ("Ann Lee", "A******")],
)
def test_a_name_shows_its_first_character_only(name: str, masked: str) -> None:
    assert mask_name(name) == masked


@given(st.text(min_size=1, max_size=50))
def test_a_masked_name_keeps_its_length_and_hides_the_rest(name: str) -> None:
    masked = mask_name(name)
    assert len(masked) == len(name)
    assert masked[0] == name[0] and set(masked[1:]) <= {"*"}


@pytest.mark.parametrize(
    ("enrolled", "relation", "expected"),
    [
        ("enrolled-hash", "self", "enrolled-hash"),  # the enrolled person wins
        ("enrolled-hash", "child", "enrolled-hash"),  # paying for a child: still the payer
        (None, "self", "beneficiary-hash"),  # pays for itself: the beneficiary is the payer
        (None, "parent", None),  # nobody known: the cap follows the payer id
    ],
)
def test_the_cap_follows_the_person_when_known(
    enrolled: str | None, relation: Relation, expected: str | None
) -> None:
    assert cap_identity(enrolled, relation, "beneficiary-hash") == expected


def test_a_second_enrolment_may_not_change_phone_or_person() -> None:
    same = {"enrolled_phone": "13800138000", "phone": "13800138000"}
    assert enrolment_conflict(**same, enrolled_id_hash="a", id_hash="a") is None
    assert enrolment_conflict(**same, enrolled_id_hash=None, id_hash="a") is None  # completes
    other_person = enrolment_conflict(**same, enrolled_id_hash="a", id_hash="b")
    assert other_person is not None and "another person" in other_person
    other_phone = enrolment_conflict(
        enrolled_phone="13800138000", phone="13900139000", enrolled_id_hash="a", id_hash="a"
    )
    assert other_phone is not None and "verified step" in other_phone
