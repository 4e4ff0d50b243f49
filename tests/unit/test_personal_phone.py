"""The resident's phone sealed per person (issue 11, erasure of the phone): one seal
and one open function; erased → never opens; not copied yet → retried, not lost."""

from __future__ import annotations

import pytest

from shared.crypto import Sealer, SealError, phone_aad
from shared.db import is_transient_db_error
from shared.personal import (
    PersonKeyPending,
    PhoneErased,
    key_id_of,
    new_person_key,
    open_personal,
    open_phone,
    person_of_payer,
    phone_key_id,
    seal_phone,
)

SEALER = Sealer(b"s" * 32)
KID, KEY = new_person_key()
PHONE = "13800138000"
AAD = phone_aad("pay_00112233445566778899")


def test_a_phone_sealed_under_the_person_key_opens_with_it_and_carries_its_mask() -> None:
    sealed = seal_phone(KID, KEY, PHONE, aad=AAD)
    assert sealed.startswith(f"p1.{KID}.") and PHONE not in sealed and "138****" not in sealed
    assert key_id_of(sealed) == KID == phone_key_id(sealed)
    assert open_phone(sealed, aad=AAD, sealer=SEALER, person_keys={KID: KEY}) == PHONE
    inside = open_personal(sealed, KEY, aad=AAD)
    assert inside == {"phone": PHONE, "phone_masked": "138****8000"}


def test_an_erased_key_never_opens_the_phone() -> None:
    sealed = seal_phone(KID, KEY, PHONE, aad=AAD)
    with pytest.raises(PhoneErased):
        open_phone(sealed, aad=AAD, sealer=SEALER, person_keys={KID: None})
    assert isinstance(PhoneErased("x"), SealError)  # a sender treats it as permanent


def test_a_key_not_copied_yet_is_waited_for_like_a_timeout() -> None:
    sealed = seal_phone(KID, KEY, PHONE, aad=AAD)
    with pytest.raises(PersonKeyPending) as caught:
        open_phone(sealed, aad=AAD, sealer=SEALER, person_keys={})
    assert is_transient_db_error(caught.value)  # the consumer retries, never dead-letters


def test_a_phone_moved_to_another_record_or_key_does_not_open() -> None:
    sealed = seal_phone(KID, KEY, PHONE, aad=AAD)
    with pytest.raises(SealError):
        open_phone(sealed, aad=phone_aad("pay_other"), sealer=SEALER, person_keys={KID: KEY})
    with pytest.raises(SealError):
        open_phone(sealed, aad=AAD, sealer=SEALER, person_keys={KID: new_person_key()[1]})


def test_a_phone_sealed_before_issue_11_still_opens_with_the_system_key() -> None:
    old = SEALER.seal(PHONE, aad=AAD)
    assert phone_key_id(old) is None
    assert open_phone(old, aad=AAD, sealer=SEALER, person_keys={}) == PHONE


def test_a_payer_without_an_id_number_is_a_person_of_its_own() -> None:
    assert person_of_payer("ab" * 32, "u-1") == "ab" * 32
    assert person_of_payer(None, "u-1") == "payer:u-1"
