"""Settings of the notify service (NOTIFY_*) and of the development SMS gateway
(SMS_GATEWAY_*), each turned into the plain values its parts take."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.notify.sender import SenderOptions
from shared.regions import BUREAU_NAMES
from shared.settings import ServiceSettings


class NotifySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFY_", extra="ignore")
    service: str = "notify"
    port: int = 8004

    sms_gateway_url: str = Field(
        "http://127.0.0.1:8009",
        validation_alias=AliasChoices("SMS_GATEWAY_URL", "NOTIFY_SMS_GATEWAY_URL"),
    )
    sms_timeout_seconds: float = 5.0
    send_batch_size: int = Field(10, ge=1, le=100)
    send_poll_seconds: float = 0.25
    send_max_attempts: int = Field(10, ge=1)
    send_backoff_base_seconds: float = 1.0
    send_backoff_cap_seconds: float = 60.0
    bureau_names: dict[str, str] = Field(
        default_factory=lambda: dict(BUREAU_NAMES),
        description="region → bureau name in balance-change texts (as PAYMENT_BUREAU_NAMES)",
    )

    def sender_options(self) -> SenderOptions:
        return SenderOptions(
            batch_size=self.send_batch_size,
            poll_interval=self.send_poll_seconds,
            timeout=self.sms_timeout_seconds,
            max_attempts=self.send_max_attempts,
            backoff_base=timedelta(seconds=self.send_backoff_base_seconds),
            backoff_cap=timedelta(seconds=self.send_backoff_cap_seconds),
        )


class SmsGatewaySettings(BaseSettings):
    """The development SMS gateway (plays the resident's handset; never production)."""

    model_config = SettingsConfigDict(env_prefix="SMS_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8009
    store: Path | None = Field(None, description="SQLite file that keeps every message")
    fail_first: int = Field(0, ge=0, description="answer 503 to the first N POSTs (tests)")
    environment: str = Field("development", validation_alias=AliasChoices("YIBAO_ENVIRONMENT"))
    log_level: str = Field("INFO", validation_alias=AliasChoices("YIBAO_LOG_LEVEL"))
