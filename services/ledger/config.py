"""Ledger settings: LEDGER_* plus the shared YIBAO_* names, turned into the domain's
value objects (``receipt_policy``, ``posting_keys``)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import DEFAULT_RECEIPT_TITLE, DEFAULT_REVIEWER, ReceiptPolicy
from services.ledger.signing import ReceiptSigner
from shared.crypto import parse_key
from shared.regions import BUREAU_NAMES, bureau_name
from shared.settings import ServiceSettings

# Throw-away Ed25519 seed (32 bytes) so the ledger starts alone in development only.
DEV_RECEIPT_SIGNING_KEY = "ZGV2LW9ubHktcmVjZWlwdC1zaWduaW5nLXNlZWQtMzI"


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
    bureau_names: dict[str, str] = Field(
        default_factory=lambda: dict(BUREAU_NAMES),
        description="region → bureau name (收款单位); overrides shared.regions.BUREAU_NAMES",
    )
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

    def receipt_signer(self) -> ReceiptSigner:
        return ReceiptSigner(self.signing_seed())

    def posting_keys(self, signer: ReceiptSigner) -> PostingKeys:
        return PostingKeys(check_key=self.hash_key_bytes(), signer=signer)

    def receipt_policy(self) -> ReceiptPolicy:
        return ReceiptPolicy(
            category=self.receipt_category,
            type_code=self.receipt_type,
            title=self.receipt_title,
            reviewer=self.receipt_reviewer,
            bureau_names=dict(self.bureau_names),
        )

    def bureau_name(self, region: str) -> str:
        return bureau_name(region, self.bureau_names)
