"""Ledger settings: LEDGER_* plus the shared YIBAO_* names, turned into the domain's
value objects (``receipt_policy``, ``posting_keys``, ``proxy_networks``)."""

from __future__ import annotations

from datetime import time

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.ledger.domain.accounts import BANK_NAME_RE
from services.ledger.domain.clearing import parse_cutoff
from services.ledger.domain.posting import PostingKeys
from services.ledger.domain.receipts import DEFAULT_RECEIPT_TITLE, DEFAULT_REVIEWER, ReceiptPolicy
from services.ledger.receipts.ratelimit import Network, parse_networks
from services.ledger.settlement.service import SettlementSetup
from services.ledger.signing import LedgerSigners, ReceiptSigner, SigningPurpose
from shared.crypto import KeyPurpose, parse_key
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
        description="urlsafe base64 of the 32-byte root Ed25519 seed: each purpose (receipts,"
        " journal, settlement files, export manifests, certificates) signs with its own seed"
        " derived from it (signer)",
    )
    receipt_category: str = Field("06", pattern=r"^[0-9]{2}$", description="票据代码 category")
    receipt_type: str = Field("01", pattern=r"^[0-9]{2}$", description="票据代码 type")
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
    trusted_proxies: str = Field(
        "",
        description="comma-separated CIDRs of the proxies in front of the ledger whose"
        " X-Forwarded-For is believed (default: none)",
    )

    # Settlement (DESIGN.md "Contract additions: settlement").
    clearing_cutoff: str = Field("23:00", description="clearing cut-off (日切), HH:MM Shanghai")
    settlement_bank: str = Field("devbank", description="the bank that carries settlements")
    bank_gateway_url: str = Field(
        "http://127.0.0.1:8010",
        validation_alias=AliasChoices(
            "LEDGER_BANK_GATEWAY_URL", "BANK_GATEWAY_URL", "bank_gateway_url"
        ),
        description="where settlement transfers are instructed (POST /transfers)",
    )
    transfer_timeout_seconds: float = Field(5.0, gt=0, description="one call to the bank")
    transfer_retry_base_seconds: float = Field(1.0, gt=0, description="first retry, doubled")
    transfer_retry_max_seconds: float = Field(60.0, gt=0)
    transfer_lease_seconds: float = Field(
        30.0, gt=0, description="a transfer being asked is left alone this long"
    )
    transfer_poll_interval_seconds: float = Field(0.5, gt=0)
    clearing_check_interval_seconds: float = Field(
        30.0, gt=0, description="how often the scheduler looks for days past their cut-off"
    )

    @field_validator("clearing_cutoff")
    @classmethod
    def _cutoff_is_hh_mm(cls, value: str) -> str:
        parse_cutoff(value)
        return value

    @field_validator("settlement_bank")
    @classmethod
    def _bank_name(cls, value: str) -> str:
        if not BANK_NAME_RE.match(value):
            raise ValueError(f"bank name {value!r}: lower-case letters, digits, _ and -")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        try:
            parse_networks(value)
        except ValueError as exc:
            raise ValueError(f"{exc}; give CIDRs such as 10.0.0.0/8") from exc
        return value

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

    def named_secrets(self) -> list[tuple[str, str]]:
        """The shared secrets and the receipt signing key: no two alike, each checked
        outside development (``ServiceSettings.secret_problems``)."""
        signing_key = ("YIBAO_RECEIPT_SIGNING_KEY", self.receipt_signing_key.get_secret_value())
        return [*super().named_secrets(), signing_key]

    def proxy_networks(self) -> tuple[Network, ...]:
        """The trusted proxies (``LEDGER_TRUSTED_PROXIES``) as networks."""
        return parse_networks(self.trusted_proxies)

    def _signing_root(self) -> bytes:
        return parse_key(self.receipt_signing_key.get_secret_value())

    def signers(self) -> LedgerSigners:
        """The ledger's signing keys, one per purpose, derived from the root seed."""
        return LedgerSigners.derive(self._signing_root())

    def signer(self, purpose: SigningPurpose) -> ReceiptSigner:
        """The key that signs ``purpose`` (e.g. ``SigningPurpose.CERTIFICATES``)."""
        return self.signers().signer(purpose)

    def undivided_signer(self) -> ReceiptSigner:
        """The root seed's own key: it signed every artefact before issue 11 and signs
        nothing now; published while what it signed is in force."""
        return ReceiptSigner(self._signing_root())

    def posting_keys(self, signers: LedgerSigners) -> PostingKeys:
        return PostingKeys(
            check_key=self.hash_key_for(KeyPurpose.CHECK_CODE),
            signer=signers.receipts,
            journal_signer=signers.journal,
        )

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

    def cutoff_time(self) -> time:
        return parse_cutoff(self.clearing_cutoff)

    def settlement_setup(self, signers: LedgerSigners) -> SettlementSetup:
        return SettlementSetup(
            ledger_topic=self.topics.ledger,
            signer=signers.journal,
            file_signer=signers.signer(SigningPurpose.SETTLEMENT),
            cutoff=self.cutoff_time(),
            bank=self.settlement_bank,
            may_force=self.may_force_close(),
        )

    def may_force_close(self) -> bool:
        """Closing a day before its cut-off: development and test only."""
        return self.environment in ("development", "test")
