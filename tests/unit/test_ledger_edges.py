"""Ledger edges that need no servers: the settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ledger.config import DEV_RECEIPT_SIGNING_KEY, LedgerSettings
from services.ledger.domain.receipts import ReceiptPolicy
from services.ledger.signing import SigningPurpose
from shared.settings import ConfigurationError

REAL_SEED = "c2VjcmV0LXJlY2VpcHQtc2lnbmluZy1zZWVkLTMyYiE"  # 32 bytes, test only


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("YIBAO_RECEIPT_SIGNING_KEY", "LEDGER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("YIBAO_ENVIRONMENT", "development")  # unset means production (8117c65)
    settings = LedgerSettings()
    assert settings.port == 8002
    assert settings.service == "ledger"
    policy = settings.receipt_policy()
    assert (policy.category, policy.type_code) == ("06", "01")
    assert (policy.title, policy.reviewer) == (ReceiptPolicy().title, "系统复核")
    assert settings.bureau_name("110000") == "北京市医疗保障局"
    assert settings.bureau_name("120000") == "天津市医疗保障局"  # every GB/T 2260 region named
    assert len(settings.signer(SigningPurpose.RECEIPTS).key_id) == 16


def test_settings_read_the_shared_signing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", REAL_SEED)
    monkeypatch.setenv("LEDGER_RECEIPT_CATEGORY", "07")
    settings = LedgerSettings()
    assert settings.receipt_signing_key.get_secret_value() == REAL_SEED
    assert settings.receipt_policy().category == "07"


def test_development_signing_key_is_refused_outside_development(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YIBAO_ENVIRONMENT", "production")
    monkeypatch.setenv("YIBAO_SEAL_KEY", "cmVhbC1zZWFsLWtleS1mb3ItdGVzdHMtb25seS0zMmI")
    monkeypatch.setenv("YIBAO_HASH_KEY", "cmVhbC1oYXNoLWtleS1mb3ItdGVzdHMtb25seS0zMmI")
    # Random enough for the shared refusal of short or patterned keys (3d47fe3).
    monkeypatch.setenv("YIBAO_INTERNAL_TOKEN", "Zk3q9TzXv1bWm7Lp2Rs8Hn4Yc6Ud0JeA")
    monkeypatch.setenv("YIBAO_API_KEYS", "Qw7Er2Ty9Ui4Op1As6Df3Gh8Jk")
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", DEV_RECEIPT_SIGNING_KEY)
    with pytest.raises(ValidationError, match="YIBAO_RECEIPT_SIGNING_KEY"):
        LedgerSettings()
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", REAL_SEED)
    assert LedgerSettings().environment == "production"


def test_malformed_signing_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", "dG9vLXNob3J0")
    with pytest.raises(ValidationError, match="32 bytes"):
        LedgerSettings()


def test_signing_key_is_one_of_the_named_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The receipt signing key is checked with the shared secrets: never the same value
    as another secret, and not weak, outside development."""
    monkeypatch.setenv("YIBAO_ENVIRONMENT", "production")
    monkeypatch.setenv("YIBAO_SEAL_KEY", REAL_SEED)  # the signing key given a second role
    monkeypatch.setenv("YIBAO_HASH_KEY", "cmVhbC1oYXNoLWtleS1mb3ItdGVzdHMtb25seS0zMmI")
    monkeypatch.setenv("YIBAO_INTERNAL_TOKEN", "Zk3q9TzXv1bWm7Lp2Rs8Hn4Yc6Ud0JeA")
    monkeypatch.setenv("YIBAO_API_KEYS", "Qw7Er2Ty9Ui4Op1As6Df3Gh8Jk")
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", REAL_SEED)
    with pytest.raises(ConfigurationError) as refused:
        LedgerSettings.load()
    message = str(refused.value)
    assert "YIBAO_RECEIPT_SIGNING_KEY and YIBAO_SEAL_KEY" in message
    assert REAL_SEED not in message
    monkeypatch.setenv("YIBAO_SEAL_KEY", "cmVhbC1zZWFsLWtleS1mb3ItdGVzdHMtb25seS0zMmI")
    assert ("YIBAO_RECEIPT_SIGNING_KEY", REAL_SEED) in LedgerSettings.load().named_secrets()
    monkeypatch.setenv("YIBAO_RECEIPT_SIGNING_KEY", "A" * 43)  # 32 zero bytes: not random
    with pytest.raises(ConfigurationError, match="YIBAO_RECEIPT_SIGNING_KEY"):
        LedgerSettings.load()
