"""Settings of the payment service (env prefix ``PAYMENT_``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from shared.events import PaymentMethod
from shared.settings import ServiceSettings

DEFAULT_BUREAU_NAMES: dict[str, str] = {
    "110000": "北京市医疗保障局",
    "310000": "上海市医疗保障局",
    "440100": "广州市医疗保障局",
}


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PAYMENT_", extra="ignore", populate_by_name=True)

    service: str = "payment"
    port: int = 8001

    risk_url: str = Field(
        "http://127.0.0.1:8003",
        validation_alias=AliasChoices("PAYMENT_RISK_URL", "RISK_URL", "risk_url"),
        description="risk service base URL, for the synchronous SMS-code check",
    )
    risk_timeout_seconds: float = Field(5.0, gt=0)

    # Single-payment limits per method, in fen (DOMAIN.md "Payment methods and limits").
    wallet_limit_fen: int = Field(200_000, gt=0)
    bank_card_limit_fen: int = Field(500_000, gt=0)
    medical_account_limit_fen: int = Field(5_000_000, gt=0, description="per local policy")

    bureau_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_BUREAU_NAMES))

    idempotency_ttl_hours: int = Field(24, ge=24, description="keys are kept at least 24 h")
    idempotency_takeover_seconds: float = Field(
        30.0, gt=0, description="an in-flight key older than this is taken over (crash safety)"
    )
    idempotency_purge_interval_seconds: float = Field(3600.0, gt=0)

    def method_limits(self) -> dict[PaymentMethod, int]:
        return {
            "wallet": self.wallet_limit_fen,
            "bank_card": self.bank_card_limit_fen,
            "medical_account": self.medical_account_limit_fen,
        }
