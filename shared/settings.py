"""Settings every service shares; each service subclasses with its own ``env_prefix``.

The names that the local stack writes (KAFKA_BOOTSTRAP, DATABASE_URL, API_KEY and the
YIBAO_* secrets of .run/secrets.env) are read as they are, without the service prefix.
Development has fixed throw-away keys so a service starts alone; any other environment
refuses them and asks for real ones.

API keys come in three roles (``shared.http.CallerKeys``): caller keys
(``YIBAO_API_KEYS``, comma-separated), bureau keys (``YIBAO_BUREAU_API_KEYS``,
``region:key[,region:key]``: a bureau key acts for its region) and operator keys
(``YIBAO_OPERATOR_API_KEYS``, comma-separated).
"""

from __future__ import annotations

import sys
from typing import Any, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import structlog
from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.crypto import KeyPurpose, Sealer, derive_key, parse_key
from shared.errors import YibaoError
from shared.regions import region_problem
from shared.topics import TopicNames

log = structlog.get_logger(__name__)

# Throw-away development keys: 32 bytes each, refused outside development.
DEV_SEAL_KEY = "ZGV2LW9ubHktc2VhbC1rZXktZG8tbm90LXVzZS0zMmI"
DEV_HASH_KEY = "ZGV2LW9ubHktaGFzaC1rZXktZG8tbm90LXVzZS0zMmI"
DEV_INTERNAL_TOKEN = "dev-only-internal-token"  # noqa: S105 - refused outside development
DEV_API_KEY = "yb_dev_local_key"
DEV_BUREAU_API_KEY = "yb_dev_bureau_key"
DEV_OPERATOR_API_KEY = "yb_dev_operator_key"
_PLACEHOLDERS = {
    DEV_SEAL_KEY,
    DEV_HASH_KEY,
    DEV_INTERNAL_TOKEN,
    DEV_API_KEY,
    DEV_BUREAU_API_KEY,
    DEV_OPERATOR_API_KEY,
    "changeme",
    "",
}


# A service started without saying where it runs is production: it checks its secrets.
# The local stack (deploy/) and the tests say YIBAO_ENVIRONMENT=development themselves.
DEFAULT_ENVIRONMENT: Literal["development", "test", "production"] = "production"
MIN_API_KEY_CHARS = 24
MIN_TOKEN_CHARS = 32
KEY_HINT = (
    'a random 32-byte key in urlsafe base64, e.g. python -c "import base64, secrets;'
    ' print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"'
)
DEV_HINT = "(or set YIBAO_ENVIRONMENT=development to run on the development keys)"


class ConfigurationError(YibaoError):
    """Settings a service must not start with; the message names the variables, never
    their values."""


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


def _weak(raw: bytes | str) -> bool:
    """Few distinct symbols (``aaaa…``, ``0101…``): not a random secret, whatever its length."""
    return len(set(raw)) < 8


class ServiceSettings(BaseSettings):
    """Base settings. Subclasses set ``service`` and ``model_config`` with an env_prefix.

    Build them with ``load()`` in a composition root: a refusal is then one
    ``ConfigurationError`` naming each variable, never echoing a value (pydantic's own
    errors are also told not to: ``hide_input_in_errors``).
    """

    model_config = SettingsConfigDict(extra="ignore", hide_input_in_errors=True)
    service: str = "service"

    environment: Literal["development", "test", "production"] = Field(
        DEFAULT_ENVIRONMENT, validation_alias=_alias("YIBAO_ENVIRONMENT")
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:59092", validation_alias=_alias("YIBAO_KAFKA_BOOTSTRAP", "KAFKA_BOOTSTRAP")
    )
    admin_database_url: str = Field(
        "postgresql://postgres@127.0.0.1:55432/postgres",
        validation_alias=_alias("DATABASE_URL"),
        description="superuser DSN; the service's own database is derived from it",
    )
    dsn: str | None = Field(
        None,
        description="own database (<PREFIX>DSN); default yibao_<service> on DATABASE_URL",
    )
    topic_prefix: str = Field("", validation_alias=_alias("YIBAO_TOPIC_PREFIX"))
    seal_key: SecretStr = Field(SecretStr(DEV_SEAL_KEY), validation_alias=_alias("YIBAO_SEAL_KEY"))
    seal_keys_old: SecretStr = Field(
        SecretStr(""),
        validation_alias=_alias("YIBAO_SEAL_KEYS_OLD"),
        description="comma-separated seal keys that came before YIBAO_SEAL_KEY: values"
        " sealed under them still open, nothing new is sealed with them (key rotation)",
    )
    hash_key: SecretStr = Field(
        SecretStr(DEV_HASH_KEY),
        validation_alias=_alias("YIBAO_HASH_KEY"),
        description="root of the keyed hashes: each purpose hashes under its own key derived"
        " from it (hash_key_for); the root itself keys nothing",
    )
    hash_key_undivided: bool = Field(
        False,
        validation_alias=_alias("YIBAO_HASH_KEY_UNDIVIDED"),
        description="hash every purpose under YIBAO_HASH_KEY itself, as before issue 11: only"
        " for a deployment holding ID-number hashes made then (they cannot be recomputed)",
    )
    internal_token: SecretStr = Field(
        SecretStr(DEV_INTERNAL_TOKEN), validation_alias=_alias("YIBAO_INTERNAL_TOKEN")
    )
    api_keys: SecretStr = Field(
        SecretStr(DEV_API_KEY),
        validation_alias=_alias("YIBAO_API_KEYS", "API_KEY"),
        description="comma-separated caller keys accepted as Authorization: Bearer <key>",
    )
    bureau_api_keys: SecretStr = Field(
        SecretStr(""),
        validation_alias=_alias("YIBAO_BUREAU_API_KEYS"),
        description="bureau keys as region:key[,region:key]; a bureau key acts for its region"
        " (development, when unset: 110000 with a throw-away key)",
    )
    operator_api_keys: SecretStr = Field(
        SecretStr(""),
        validation_alias=_alias("YIBAO_OPERATOR_API_KEYS"),
        description="comma-separated operator keys (development, when unset: a throw-away key)",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="larger request bodies are refused with 413 before parsing (shared.http)",
    )
    body_limits: dict[str, int] = Field(
        default_factory=lambda: {"/v1/medical-accounts/allocations": 2 * 1024 * 1024},
        description="paths that take files, with their own body limit in bytes: the"
        " bureau's allocation file (up to 10,000 lines)",
    )
    log_level: str = Field("INFO", validation_alias=_alias("YIBAO_LOG_LEVEL"))
    log_json: bool | None = Field(None, validation_alias=_alias("YIBAO_LOG_JSON"))

    @classmethod
    def load(cls, **values: Any) -> Self:
        """The settings from the environment (and ``values``), or one ConfigurationError
        listing every problem by variable name, without any value."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = [_problem(cls, error) for error in exc.errors(include_input=False)]
            raise ConfigurationError(
                f"{cls.__name__}: cannot start: " + "; ".join(problems)
            ) from None

    @classmethod
    def load_or_exit(cls, **values: Any) -> Self:
        """``load()`` for a composition root: a refusal exits with its message (status
        2), no traceback."""
        try:
            return cls.load(**values)
        except ConfigurationError as exc:
            print(str(exc), file=sys.stderr)
            raise SystemExit(2) from None

    @model_validator(mode="after")
    def _refuse_weak_secrets(self) -> Self:
        problems = self.secret_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def named_secrets(self) -> list[tuple[str, str]]:
        """Every secret this service holds, by the variable that sets it (a subclass adds
        its own, e.g. a signing key): each must differ from every other."""
        bureau_keys = self.bureau_key_map()
        return [
            ("YIBAO_SEAL_KEY", self.seal_key.get_secret_value()),
            *(("YIBAO_SEAL_KEYS_OLD", key) for key in self._old_seal_key_texts()),
            ("YIBAO_HASH_KEY", self.hash_key.get_secret_value()),
            ("YIBAO_INTERNAL_TOKEN", self.internal_token.get_secret_value()),
            *(("YIBAO_API_KEYS", key) for key in self.api_key_list()),
            *(("YIBAO_BUREAU_API_KEYS", key) for key in bureau_keys),
            *(("YIBAO_OPERATOR_API_KEYS", key) for key in self.operator_key_list()),
        ]

    def secret_problems(self) -> list[str]:
        """Why these secrets must not be used here (empty: fine). Always: keys that do
        not parse, one key in two roles. Outside development: built-in development
        keys, short or patterned keys, the seal key equal to the hash key."""
        unparsable = self._unparsable_keys()
        if unparsable:
            return unparsable
        problems = self._shared_secrets(strict=self.environment != "development")
        if self.environment == "development" or problems:
            return problems
        named = self.named_secrets()
        placeholders = list(dict.fromkeys(n for n, v in named if v in _PLACEHOLDERS))
        if placeholders:
            problems.append(
                f"{', '.join(placeholders)} hold built-in development keys (environment"
                f" {self.environment}); set your own secrets {DEV_HINT}"
            )
        for name, value in named:
            problem = _strength_problem(name, value) if name not in placeholders else None
            if problem is not None and problem not in problems:
                problems.append(problem)
        return problems

    def _unparsable_keys(self) -> list[str]:
        bad: list[str] = []
        keys = [
            ("YIBAO_SEAL_KEY", self.seal_key.get_secret_value()),
            ("YIBAO_HASH_KEY", self.hash_key.get_secret_value()),
            *(("YIBAO_SEAL_KEYS_OLD", key) for key in self._old_seal_key_texts()),
        ]
        for name, text in keys:
            try:
                parse_key(text)
            except ValueError as exc:
                problem = f"{name} is not a 32-byte key in urlsafe base64 ({exc}); set {KEY_HINT}"
                if problem not in bad:
                    bad.append(problem)
        try:
            self.bureau_key_map()
        except ValueError as exc:
            bad.append(str(exc))
        return bad

    def _shared_secrets(self, *, strict: bool) -> list[str]:
        """One value in two roles. API keys across roles always count; outside
        development every secret does (the seal key equal to the hash key, …)."""
        holders: dict[str, set[str]] = {}
        for name, value in self.named_secrets():
            holders.setdefault(value, set()).add(name)
        problems = []
        for names in holders.values():
            if len(names) < 2:
                continue
            api_only = all(n.endswith("API_KEYS") for n in names)
            if strict or api_only:
                problems.append(
                    f"one key is given two roles ({' and '.join(sorted(names))});"
                    " give each role its own keys"
                )
        return sorted(problems)

    @property
    def database_url(self) -> str:
        if self.dsn:
            return self.dsn
        parts = urlsplit(self.admin_database_url)
        return urlunsplit(parts._replace(path=f"/yibao_{self.service}"))

    @property
    def topics(self) -> TopicNames:
        return TopicNames(self.topic_prefix)

    def api_key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip()]

    def bureau_key_map(self) -> dict[str, str]:
        """Bureau key → the region it acts for, from ``region:key[,region:key]``."""
        text = self.bureau_api_keys.get_secret_value()
        if not text.strip() and self.environment == "development":
            text = f"110000:{DEV_BUREAU_API_KEY}"
        keys: dict[str, str] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            region, sep, key = item.strip().partition(":")
            if not sep or not key.strip():
                raise ValueError(
                    "YIBAO_BUREAU_API_KEYS is region:key[,region:key], e.g. 110000:<key>"
                )
            problem = region_problem(region)
            if problem is not None:
                raise ValueError(f"YIBAO_BUREAU_API_KEYS names a region that is wrong: {problem}")
            keys[key.strip()] = region
        return keys

    def operator_key_list(self) -> list[str]:
        keys = [k.strip() for k in self.operator_api_keys.get_secret_value().split(",")]
        if not any(keys) and self.environment == "development":
            return [DEV_OPERATOR_API_KEY]
        return [k for k in keys if k]

    def seal_key_bytes(self) -> bytes:
        return parse_key(self.seal_key.get_secret_value())

    def old_seal_key_bytes(self) -> tuple[bytes, ...]:
        """The seal keys rotated out (``YIBAO_SEAL_KEYS_OLD``), newest first as listed."""
        return tuple(parse_key(text) for text in self._old_seal_key_texts())

    def sealer(self) -> Sealer:
        """The seal key ring: seals with ``YIBAO_SEAL_KEY``, opens with it and the old keys."""
        return Sealer(self.seal_key_bytes(), old_keys=self.old_seal_key_bytes())

    def _old_seal_key_texts(self) -> list[str]:
        return [k.strip() for k in self.seal_keys_old.get_secret_value().split(",") if k.strip()]

    def hash_key_for(self, purpose: KeyPurpose) -> bytes:
        """The HMAC key for one purpose, derived from ``YIBAO_HASH_KEY`` (``derive_key``);
        with ``YIBAO_HASH_KEY_UNDIVIDED``, the root itself (hashes made before issue 11)."""
        root = parse_key(self.hash_key.get_secret_value())
        return root if self.hash_key_undivided else derive_key(root, purpose)


def _strength_problem(name: str, value: str) -> str | None:
    """Why ``value`` (the secret set by ``name``) is too weak to run on, or None."""
    if name in ("YIBAO_SEAL_KEY", "YIBAO_SEAL_KEYS_OLD", "YIBAO_HASH_KEY"):
        if _weak(parse_key(value)):
            return f"{name} is not random (too few distinct bytes); set {KEY_HINT}"
        return None
    least = MIN_TOKEN_CHARS if name == "YIBAO_INTERNAL_TOKEN" else MIN_API_KEY_CHARS
    if len(value) < least or _weak(value):
        return (
            f"{name} holds a key shorter than {least} characters or not random; set random"
            f' keys, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    return None


def _problem(cls: type[BaseSettings], error: Any) -> str:
    """One pydantic error as "VARIABLE: what is wrong" (the input never shown)."""
    loc = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if not loc:
        return message
    field = cls.model_fields.get(loc[0])
    variable = loc[0].upper()
    if field is not None and isinstance(field.validation_alias, AliasChoices):
        variable = str(field.validation_alias.choices[0])
    else:
        prefix = str(cls.model_config.get("env_prefix", ""))
        variable = f"{prefix}{loc[0]}".upper()
    return f"{variable}: {message}"
