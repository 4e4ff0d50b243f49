"""One key per purpose (issue 11): every keyed hash and every ledger signature has its
own key, derived from a root secret with HKDF-SHA256; the derivation is stable (a fixed
test vector) and the keys differ per purpose."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from services.ledger.config import LedgerSettings
from services.ledger.signing import (
    UNDIVIDED,
    LedgerSigners,
    ReceiptSigner,
    SigningPurpose,
    verify_bytes,
)
from shared.crypto import KDF_SALT, KeyPurpose, derive_key, parse_key
from shared.settings import ConfigurationError, ServiceSettings

ROOT = bytes(range(32))
# derive_key(bytes(range(32)), "id_hash"): pinned; a change here changes every ID hash.
ID_HASH_VECTOR = "cdbc4317c746209bbe41c6b0eceaab49949e8e01ef91520b27e36c4592438673"


def rfc5869(root: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 by hand (RFC 5869 2.2, 2.3), 32 bytes: one expand block."""
    prk = hmac.new(KDF_SALT, root, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_the_derivation_is_hkdf_sha256_with_a_fixed_vector() -> None:
    key = derive_key(ROOT, KeyPurpose.ID_HASH)
    assert key.hex() == ID_HASH_VECTOR
    assert key == rfc5869(ROOT, b"yibao/id_hash")
    assert derive_key(ROOT, KeyPurpose.ID_HASH) == key  # stable
    assert len(key) == 32


def test_each_purpose_has_its_own_key_and_none_is_the_root() -> None:
    keys = {purpose: derive_key(ROOT, purpose) for purpose in KeyPurpose}
    assert len(set(keys.values())) == len(KeyPurpose)
    assert ROOT not in keys.values()
    assert derive_key(bytes(32), KeyPurpose.ID_HASH) != keys[KeyPurpose.ID_HASH]
    assert {p.value for p in KeyPurpose} >= {
        "id_hash",
        "phone_hash",
        "code_hash",
        "check_code",
        "fingerprint",
        "records_session",
    }


def test_settings_expose_hash_keys_by_purpose_only() -> None:
    settings = ServiceSettings(YIBAO_ENVIRONMENT="development")
    root = parse_key(settings.hash_key.get_secret_value())
    for purpose in KeyPurpose:
        assert settings.hash_key_for(purpose) == derive_key(root, purpose)
    assert not hasattr(settings, "hash_key_bytes")
    undivided = ServiceSettings(YIBAO_ENVIRONMENT="development", YIBAO_HASH_KEY_UNDIVIDED=True)
    assert undivided.hash_key_for(KeyPurpose.ID_HASH) == root  # data hashed before issue 11


def test_ledger_signing_keys_differ_per_purpose() -> None:
    settings = LedgerSettings(YIBAO_ENVIRONMENT="development")
    signers = settings.signers()
    ids = {p: signers.signer(p).key_id for p in SigningPurpose}
    assert len(set(ids.values())) == len(SigningPurpose)
    assert settings.undivided_signer().key_id not in ids.values()
    assert settings.signer(SigningPurpose.CERTIFICATES).key_id == ids[SigningPurpose.CERTIFICATES]
    assert settings.signers().receipts.key_id == ids[SigningPurpose.RECEIPTS]  # stable
    assert [purpose for purpose, _ in signers.published()] == list(SigningPurpose)


def test_one_signer_for_every_purpose_is_published_as_undivided() -> None:
    signer = ReceiptSigner(ROOT)
    assert [(p, s.key_id) for p, s in LedgerSigners.undivided(signer).published()] == [
        (UNDIVIDED, signer.key_id)
    ]


@pytest.mark.parametrize("purpose", list(SigningPurpose))
def test_a_signature_of_one_purpose_does_not_verify_under_another(
    purpose: SigningPurpose,
) -> None:
    signers = LedgerSigners.derive(ROOT)
    b64 = base64.b64encode(signers.signer(purpose).sign(b"message")).decode()
    for other in SigningPurpose:
        expected = other == purpose
        assert verify_bytes(b"message", b64, signers.signer(other).public_raw) is expected


def test_the_secret_checks_still_apply_to_the_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived keys differ even from one root, yet one root in two roles (the hash key as
    the signing seed) and a patterned root are still refused outside development."""
    root = "cmVhbC1oYXNoLWtleS1mb3ItdGVzdHMtb25seS0zMmI"
    monkeypatch.setenv("YIBAO_ENVIRONMENT", "production")
    monkeypatch.setenv("YIBAO_SEAL_KEY", "cmVhbC1zZWFsLWtleS1mb3ItdGVzdHMtb25seS0zMmI")
    monkeypatch.setenv("YIBAO_HASH_KEY", root)
    monkeypatch.setenv("YIBAO_INTERNAL_TOKEN", "Zk3q9TzXv1bWm7Lp2Rs8Hn4Yc6Ud0JeA")
    monkeypatch.setenv("YIBAO_API_KEYS", "Qw7Er2Ty9Ui4Op1As6Df3Gh8Jk")
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", root)
    with pytest.raises(ConfigurationError, match="YIBAO_HASH_KEY and YIBAO_RECEIPT_SIGNING_KEY"):
        LedgerSettings.load()
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", "cmVhbC1yZWNlaXB0LXNpZ25pbmctc2VlZC1mb3ItdGU")
    assert LedgerSettings.load().hash_key_for(KeyPurpose.CHECK_CODE) != parse_key(root)
    monkeypatch.setenv("YIBAO_HASH_KEY", base64.urlsafe_b64encode(b"ab" * 16).decode())
    with pytest.raises(ConfigurationError, match="YIBAO_HASH_KEY is not random"):
        LedgerSettings.load()
