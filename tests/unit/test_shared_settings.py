"""Secrets fail closed (issue 11): outside development a service refuses the built-in
development keys and weak ones, names the variable and never prints a value."""

from __future__ import annotations

import base64
import secrets

import pytest
from pydantic import ValidationError

from shared.settings import (
    DEV_API_KEY,
    DEV_HASH_KEY,
    DEV_INTERNAL_TOKEN,
    DEV_OPERATOR_API_KEY,
    DEV_SEAL_KEY,
    ConfigurationError,
    ServiceSettings,
)

ENV_NAMES = (
    "YIBAO_ENVIRONMENT",
    "YIBAO_SEAL_KEY",
    "YIBAO_HASH_KEY",
    "YIBAO_INTERNAL_TOKEN",
    "YIBAO_API_KEYS",
    "API_KEY",
    "YIBAO_BUREAU_API_KEYS",
    "YIBAO_OPERATOR_API_KEYS",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def token() -> str:
    return "yb_" + secrets.token_urlsafe(24)


def strong(environment: str = "production") -> dict[str, str]:
    return {
        "YIBAO_ENVIRONMENT": environment,
        "YIBAO_SEAL_KEY": key(),
        "YIBAO_HASH_KEY": key(),
        "YIBAO_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "YIBAO_API_KEYS": f"{token()},{token()}",
        "YIBAO_BUREAU_API_KEYS": f"110000:{token()}",
        "YIBAO_OPERATOR_API_KEYS": token(),
    }


def refusal(**values: str) -> str:
    """The message ``load`` refuses ``values`` with (it must refuse)."""
    with pytest.raises(ConfigurationError) as caught:
        ServiceSettings.load(**values)
    message = str(caught.value)
    for value in values.values():
        for part in value.replace(":", ",").split(","):
            if len(part) >= 6 and not part.isdigit() and part not in ("production", "development"):
                assert part not in message, "a secret value was printed"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    return message


@pytest.mark.parametrize("environment", ["production", "test"])
def test_strong_secrets_start(environment: str) -> None:
    settings = ServiceSettings.load(**strong(environment))
    assert settings.environment == environment


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("YIBAO_SEAL_KEY", DEV_SEAL_KEY),
        ("YIBAO_HASH_KEY", DEV_HASH_KEY),
        ("YIBAO_INTERNAL_TOKEN", DEV_INTERNAL_TOKEN),
        ("YIBAO_API_KEYS", DEV_API_KEY),
        ("YIBAO_OPERATOR_API_KEYS", DEV_OPERATOR_API_KEY),
    ],
)
@pytest.mark.parametrize("environment", ["production", "test"])
def test_development_keys_are_refused_outside_development(
    environment: str, variable: str, value: str
) -> None:
    message = refusal(**{**strong(environment), variable: value})
    assert variable in message and "development" in message


def test_unset_secrets_are_the_development_keys_and_refused_in_production() -> None:
    message = refusal(YIBAO_ENVIRONMENT="production")
    for variable in ("YIBAO_SEAL_KEY", "YIBAO_HASH_KEY", "YIBAO_INTERNAL_TOKEN", "YIBAO_API_KEYS"):
        assert variable in message


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("YIBAO_API_KEYS", "short-caller-key-17c", "shorter than 24"),
        ("YIBAO_API_KEYS", f"{token()},abcdefabcdefabcdefabcdefabcdef", "not random"),
        ("YIBAO_OPERATOR_API_KEYS", "op-key", "shorter than 24"),
        ("YIBAO_BUREAU_API_KEYS", "110000:bureau-key", "shorter than 24"),
        ("YIBAO_INTERNAL_TOKEN", "a-real-internal-token-21", "shorter than 32"),
        ("YIBAO_SEAL_KEY", base64.urlsafe_b64encode(b"\0" * 32).decode(), "not random"),
        ("YIBAO_HASH_KEY", base64.urlsafe_b64encode(b"ab" * 16).decode(), "not random"),
        ("YIBAO_SEAL_KEY", base64.urlsafe_b64encode(b"k" * 16).decode(), "32-byte"),
    ],
)
def test_weak_keys_are_refused_outside_development(variable: str, value: str, why: str) -> None:
    message = refusal(**{**strong(), variable: value})
    assert variable in message and why in message


def test_the_seal_key_equal_to_the_hash_key_is_refused() -> None:
    same = key()
    message = refusal(**{**strong(), "YIBAO_SEAL_KEY": same, "YIBAO_HASH_KEY": same})
    assert "two roles (YIBAO_HASH_KEY and YIBAO_SEAL_KEY)" in message


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("YIBAO_API_KEYS", "YIBAO_OPERATOR_API_KEYS"),
        ("YIBAO_API_KEYS", "YIBAO_INTERNAL_TOKEN"),
        ("YIBAO_OPERATOR_API_KEYS", "YIBAO_INTERNAL_TOKEN"),
    ],
)
def test_one_key_in_two_roles_is_refused(first: str, second: str) -> None:
    shared = secrets.token_urlsafe(32)
    message = refusal(**{**strong(), first: shared, second: shared})
    assert "two roles" in message and first in message and second in message


def test_development_runs_on_the_development_keys_when_said_explicitly() -> None:
    settings = ServiceSettings.load(YIBAO_ENVIRONMENT="development")
    assert settings.api_key_list() == [DEV_API_KEY]
    assert "environment" in settings.model_fields_set


def test_a_misconfiguration_never_echoes_a_secret() -> None:
    caller = "caller-" + secrets.token_urlsafe(24)
    bureau = "bureau-" + secrets.token_urlsafe(24)
    for values in (
        {"YIBAO_API_KEYS": caller, "YIBAO_OPERATOR_API_KEYS": caller},  # two roles
        {"YIBAO_API_KEYS": caller, "port": "not-a-port"},
        {"YIBAO_BUREAU_API_KEYS": bureau},  # no region
    ):
        with pytest.raises(ValidationError) as raw:
            ServiceSettings(YIBAO_ENVIRONMENT="development", **values)  # type: ignore[arg-type]
        assert caller not in str(raw.value) and bureau not in str(raw.value)
        with pytest.raises(ConfigurationError) as clean:
            ServiceSettings.load(YIBAO_ENVIRONMENT="development", **values)
        assert caller not in str(clean.value) and bureau not in str(clean.value)


def test_the_clean_error_names_each_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ServiceSettings.load(YIBAO_ENVIRONMENT="staging", port="x")
    message = str(caught.value)
    assert "YIBAO_ENVIRONMENT:" in message and "PORT:" in message
    assert "staging" not in message


def test_a_bureau_key_names_an_existing_region() -> None:
    message = refusal(**{**strong(), "YIBAO_BUREAU_API_KEYS": f"119999:{token()}"})
    assert "YIBAO_BUREAU_API_KEYS" in message and "119999 is not a region code" in message


def test_load_or_exit_prints_the_clean_message_and_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    caller = token()
    with pytest.raises(SystemExit) as caught:
        ServiceSettings.load_or_exit(YIBAO_ENVIRONMENT="production", YIBAO_API_KEYS=caller)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "YIBAO_SEAL_KEY" in err and "YIBAO_ENVIRONMENT=development" in err
    assert caller not in err
