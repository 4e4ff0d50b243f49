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

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.crypto import parse_key
from shared.regions import REGION_RE
from shared.topics import TopicNames

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


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class ServiceSettings(BaseSettings):
    """Base settings. Subclasses set ``service`` and ``model_config`` with an env_prefix."""

    model_config = SettingsConfigDict(extra="ignore")
    service: str = "service"

    environment: Literal["development", "test", "production"] = Field(
        "development", validation_alias=_alias("YIBAO_ENVIRONMENT")
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
    hash_key: SecretStr = Field(SecretStr(DEV_HASH_KEY), validation_alias=_alias("YIBAO_HASH_KEY"))
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

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> ServiceSettings:
        parse_key(self.seal_key.get_secret_value())
        parse_key(self.hash_key.get_secret_value())
        bureau_keys = self.bureau_key_map()  # refuses a malformed region:key list
        roles = [set(self.api_key_list()), set(bureau_keys), set(self.operator_key_list())]
        if roles[0] & roles[1] or roles[0] & roles[2] or roles[1] & roles[2]:
            raise ValueError("one API key is given two roles; give each role its own keys")
        if self.environment != "development":
            for name in ("seal_key", "hash_key", "internal_token"):
                if getattr(self, name).get_secret_value() in _PLACEHOLDERS:
                    raise ValueError(f"{name} is a development placeholder; set a real secret")
            if set(self.api_key_list()) & _PLACEHOLDERS:
                raise ValueError("api_keys holds a development placeholder; set real keys")
            if set(bureau_keys) & _PLACEHOLDERS:
                raise ValueError("bureau_api_keys holds a development placeholder; set real keys")
            if set(self.operator_key_list()) & _PLACEHOLDERS:
                raise ValueError("operator_api_keys holds a development placeholder; set real keys")
        return self

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
            if not sep or not REGION_RE.fullmatch(region) or not key.strip():
                raise ValueError(
                    "YIBAO_BUREAU_API_KEYS is region:key[,region:key], e.g. 110000:<key>"
                )
            keys[key.strip()] = region
        return keys

    def operator_key_list(self) -> list[str]:
        keys = [k.strip() for k in self.operator_api_keys.get_secret_value().split(",")]
        if not any(keys) and self.environment == "development":
            return [DEV_OPERATOR_API_KEY]
        return [k for k in keys if k]

    def seal_key_bytes(self) -> bytes:
        return parse_key(self.seal_key.get_secret_value())

    def hash_key_bytes(self) -> bytes:
        return parse_key(self.hash_key.get_secret_value())
