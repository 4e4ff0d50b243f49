"""Seal keys rotate (issue 11): sealed values carry their key's id, values sealed under
an old key still open, old keys come from YIBAO_SEAL_KEYS_OLD with the seal key's
secret hygiene."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.crypto import Sealer, SealError, b64d, b64e, seal_key_id
from shared.settings import ConfigurationError, ServiceSettings

AAD = "phone:pay_1"


def v1_token(key: bytes, plaintext: str, aad: str) -> str:
    """A value sealed the way services did before key ids (``v1.<b64>``)."""
    nonce = os.urandom(12)
    return "v1." + b64e(nonce + AESGCM(key).encrypt(nonce, plaintext.encode(), aad.encode()))


def test_the_key_id_is_the_first_8_hex_of_the_keys_sha256() -> None:
    key = os.urandom(32)
    assert seal_key_id(key) == hashlib.sha256(key).hexdigest()[:8]
    assert Sealer(key).key_id == seal_key_id(key)


def test_a_new_seal_is_v2_and_names_its_key() -> None:
    key = os.urandom(32)
    token = Sealer(key).seal("13800138000", aad=AAD)
    version, kid, body = token.split(".")
    assert (version, kid) == ("v2", seal_key_id(key))
    assert "13800138000" not in token and len(b64d(body)) == 12 + len("13800138000") + 16
    assert Sealer(key).open(token, aad=AAD) == "13800138000"


def test_v1_values_still_open_with_the_current_key_or_an_old_one() -> None:
    a, b, c = os.urandom(32), os.urandom(32), os.urandom(32)
    assert Sealer(a).open(v1_token(a, "138", AAD), aad=AAD) == "138"
    assert Sealer(b, old_keys=[c, a]).open(v1_token(a, "139", AAD), aad=AAD) == "139"
    with pytest.raises(SealError, match="does not open"):
        Sealer(b, old_keys=[c]).open(v1_token(a, "139", AAD), aad=AAD)


def test_rotation_sealed_under_a_opens_after_a_became_old_and_b_current() -> None:
    a, b = os.urandom(32), os.urandom(32)
    under_a = Sealer(a).seal("13800138000", aad=AAD)
    rotated = Sealer(b, old_keys=(a,))
    assert rotated.key_ids == (seal_key_id(b), seal_key_id(a))
    assert rotated.open(under_a, aad=AAD) == "13800138000"
    under_b = rotated.seal("13900139000", aad=AAD)
    assert under_b.split(".")[1] == seal_key_id(b)
    assert Sealer(b).open(under_b, aad=AAD) == "13900139000"
    with pytest.raises(SealError):
        rotated.open(under_a, aad="phone:pay_2")  # the binding still holds


def test_an_unknown_key_id_is_named_never_the_key() -> None:
    a, b = os.urandom(32), os.urandom(32)
    token = Sealer(a).seal("13800138000", aad=AAD)
    with pytest.raises(SealError) as caught:
        Sealer(b).open(token, aad=AAD)
    message = str(caught.value)
    assert seal_key_id(a) in message and "YIBAO_SEAL_KEYS_OLD" in message
    for key in (a, b):
        assert b64e(key) not in message and key.hex() not in message


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1],  # ciphertext/tag
        lambda t: t.replace(".", ".0", 1)[:-1],  # the key id
        lambda t: "v3" + t[2:],  # the version
        lambda t: t.rsplit(".", 1)[0] + ".QUJD",  # too short
        lambda t: t.rsplit(".", 1)[0] + ".!!!",  # not base64
    ],
)
def test_a_tampered_value_does_not_open(tamper: object) -> None:
    key = os.urandom(32)
    sealer = Sealer(key, old_keys=(os.urandom(32),))
    token = sealer.seal("13800138000", aad=AAD)
    with pytest.raises(SealError):
        sealer.open(tamper(token), aad=AAD)  # type: ignore[operator]


def _key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _strong(**values: str) -> dict[str, str]:
    return {
        "YIBAO_ENVIRONMENT": "production",
        "YIBAO_SEAL_KEY": _key(),
        "YIBAO_HASH_KEY": _key(),
        "YIBAO_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "YIBAO_API_KEYS": "yb_" + secrets.token_urlsafe(24),
        "YIBAO_BUREAU_API_KEYS": "110000:yb_" + secrets.token_urlsafe(24),
        "YIBAO_OPERATOR_API_KEYS": "yb_" + secrets.token_urlsafe(24),
        **values,
    }


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("YIBAO_ENVIRONMENT", "YIBAO_SEAL_KEY", "YIBAO_SEAL_KEYS_OLD", "YIBAO_HASH_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_settings_build_the_key_ring_from_the_old_keys() -> None:
    old_1, old_2 = _key(), _key()
    values = _strong(YIBAO_SEAL_KEYS_OLD=f" {old_1}, {old_2} ,")
    settings = ServiceSettings.load(**values)
    under_old = Sealer(b64d(old_2)).seal("13800138000", aad=AAD)
    sealer = settings.sealer()
    assert sealer.key_id == seal_key_id(b64d(values["YIBAO_SEAL_KEY"]))
    assert sealer.open(under_old, aad=AAD) == "13800138000"
    assert settings.old_seal_key_bytes() == (b64d(old_1), b64d(old_2))
    assert old_1 not in repr(settings) and old_1 not in str(settings.model_dump())
    assert ServiceSettings.load(**_strong()).old_seal_key_bytes() == ()


@pytest.mark.parametrize(
    ("old", "why"),
    [
        ("current", "two roles"),
        ("hash", "two roles"),
        ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "not random"),
        ("c2hvcnQ", "32-byte key"),
    ],
)
def test_a_bad_old_seal_key_is_refused_naming_the_variable(old: str, why: str) -> None:
    values = _strong()
    old_key = {"current": values["YIBAO_SEAL_KEY"], "hash": values["YIBAO_HASH_KEY"]}.get(old, old)
    values["YIBAO_SEAL_KEYS_OLD"] = f"{_key()},{old_key}"
    with pytest.raises(ConfigurationError) as caught:
        ServiceSettings.load(**values)
    message = str(caught.value)
    assert "YIBAO_SEAL_KEYS_OLD" in message and why in message
    for value in values["YIBAO_SEAL_KEYS_OLD"].split(","):
        assert value not in message


def test_development_allows_the_old_key_equal_to_the_current_one() -> None:
    settings = ServiceSettings.load(
        YIBAO_ENVIRONMENT="development",
        YIBAO_SEAL_KEY=(key := _key()),
        YIBAO_SEAL_KEYS_OLD=key,
    )
    assert settings.sealer().key_ids == (seal_key_id(b64d(key)),)
