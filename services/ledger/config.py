"""Ledger settings: LEDGER_* plus the shared YIBAO_* names."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.ledger.receipts import DEFAULT_RECEIPT_TITLE, DEFAULT_REVIEWER, ReceiptPolicy
from shared.crypto import parse_key
from shared.settings import ServiceSettings

# Throw-away Ed25519 seed (32 bytes) so the ledger starts alone in development only.
DEV_RECEIPT_SIGNING_KEY = "ZGV2LW9ubHktcmVjZWlwdC1zaWduaW5nLXNlZWQtMzI"

DEFAULT_BUREAUS = {
    "110000": "北京市医疗保障局",
    "310000": "上海市医疗保障局",
    "440100": "广州市医疗保障局",
}


class LedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore")
    service: str = "ledger"
    port: int = 8002

    receipt_signing_key: SecretStr = Field(
        SecretStr(DEV_RECEIPT_SIGNING_KEY),
        validation_alias=AliasChoices("YIBAO_RECEIPT_SIGNING_KEY"),
        description="urlsafe base64 of the 32-byte Ed25519 seed that signs receipts",
    )
    receipt_category: str = Field("06", pattern=r"^\d{2}$", description="票据代码 category")
    receipt_type: str = Field("01", pattern=r"^\d{2}$", description="票据代码 type")
    receipt_title: str = Field(DEFAULT_RECEIPT_TITLE, min_length=1, description="票据名称")
    receipt_reviewer: str = Field(DEFAULT_REVIEWER, min_length=1, description="复核人")
    bureau_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_BUREAUS))
    receipt_font: str | None = Field(
        None, description="TrueType (.ttf/.ttc) CJK font for receipt PDFs; found when unset"
    )
    verify_rate_per_minute: int = Field(30, ge=1, description="public receipt calls per client IP")

    @model_validator(mode="after")
    def _refuse_dev_signing_key(self) -> LedgerSettings:
        parse_key(self.receipt_signing_key.get_secret_value())
        if (
            self.environment != "development"
            and self.receipt_signing_key.get_secret_value() == DEV_RECEIPT_SIGNING_KEY
        ):
            raise ValueError(
                "YIBAO_RECEIPT_SIGNING_KEY is the development placeholder; set a real seed"
            )
        return self

    def signing_seed(self) -> bytes:
        return parse_key(self.receipt_signing_key.get_secret_value())

    def receipt_policy(self) -> ReceiptPolicy:
        return ReceiptPolicy(
            category=self.receipt_category,
            type_code=self.receipt_type,
            title=self.receipt_title,
            reviewer=self.receipt_reviewer,
            bureau_names=dict(self.bureau_names),
        )

    def bureau_name(self, region: str) -> str:
        return self.bureau_names.get(region, f"{region} 医疗保障局")
