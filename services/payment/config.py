"""Settings of the payment service (env prefix ``PAYMENT_``), turned into the plain
values the rules and the workers use."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Self

from pydantic import AliasChoices, Field, PrivateAttr, model_validator
from pydantic_settings import SettingsConfigDict

from services.payment.domain import BankPolicy, StuckPolicy
from services.payment.payer_code_domain import CodeRules
from services.payment.premium_domain import (
    PeriodWindow,
    PremiumSchedule,
    ScheduleError,
    parse_schedule,
)
from shared.crypto import KeyPurpose
from shared.events import PaymentMethod
from shared.regions import BUREAU_NAMES
from shared.settings import ServiceSettings

PREMIUM_SCHEDULE_FILE = Path(__file__).parent / "data" / "premiums.tsv"


class PaymentSettings(ServiceSettings):
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

    bureau_names: dict[str, str] = Field(default_factory=lambda: dict(BUREAU_NAMES))

    # Premiums by region, year and scheme (services/payment/data/premiums.tsv).
    premium_schedule_file: Path = Field(
        PREMIUM_SCHEDULE_FILE,
        description="the premium schedule (region, year, scheme, category -> fen), read at"
        " start; a malformed or duplicate row refuses the start",
    )
    # Off by default until DESIGN.md's example body (380.00 CNY for a resident born in
    # 1949, the same person in every example) agrees with the schedule: with them on,
    # that example is refused (premium_amount_mismatch), and paid only once a period.
    premium_schedule_enforced: bool = Field(
        False, description="refuse a premium whose amount is not the schedule's (422)"
    )
    premium_paid_once: bool = Field(
        False, description="refuse a second premium for the same person and period (409)"
    )
    premium_years_back: int = Field(5, ge=0, description="back-payment (补缴): years before now")
    premium_years_ahead: int = Field(1, ge=0, description="years after now a premium may be for")
    _premium_schedule: PremiumSchedule = PrivateAttr()

    idempotency_ttl_hours: int = Field(24, ge=24, description="keys are kept at least 24 h")
    idempotency_takeover_seconds: float = Field(
        30.0,
        gt=0,
        description="a key left in_flight by an older version (it claimed keys in"
        " a transaction of their own) is taken over after this",
    )
    idempotency_purge_interval_seconds: float = Field(3600.0, gt=0)

    # The acquiring bank behind bank cards (DESIGN.md "Contract additions: money from outside").
    bank_gateway_url: str = Field(
        "http://127.0.0.1:8010",
        validation_alias=AliasChoices(
            "PAYMENT_BANK_GATEWAY_URL", "BANK_GATEWAY_URL", "bank_gateway_url"
        ),
    )
    bank_timeout_seconds: float = Field(5.0, gt=0, description="one HTTP call to the bank")
    bank_deadline_seconds: float = Field(
        120.0, gt=0, description="no bank answer by then: the payment fails bank_unavailable"
    )
    bank_retry_base_seconds: float = Field(1.0, gt=0, description="first retry pause, doubled")
    bank_retry_max_seconds: float = Field(15.0, gt=0)
    bank_watch_hours: float = Field(
        24.0, gt=0, description="after the deadline, how long a debit is watched for a late yes"
    )
    bank_poll_interval_seconds: float = Field(
        0.25, gt=0, description="the bank worker's longest rest when idle (adaptive polling)"
    )
    bank_arrival_hours: float = Field(
        2.0, gt=0, description="bank-card money arrives within this after the bank's yes"
    )

    # Webhooks (issue 14; services/payment/webhooks.py).
    webhook_retry_base_seconds: float = Field(
        5.0, gt=0, description="first pause after a failed delivery, doubled each time"
    )
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, description="the longest pause")
    webhook_disable_after_seconds: float = Field(
        86400.0, gt=0, description="an endpoint failing this long without a success is disabled"
    )
    webhook_secret_overlap_seconds: float = Field(
        86400.0, ge=0, description="after a rotation, the old secret signs too this long"
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0)
    webhook_poll_interval_seconds: float = Field(1.0, gt=0)
    webhook_allow_private_urls: bool | None = Field(
        None,
        description="endpoints on plain http or private/loopback addresses: allowed"
        " outside production by default, refused in production unless true",
    )

    # Payments stuck in a non-final state (StuckPaymentSweeper).
    stuck_after_seconds: float = Field(
        600.0, gt=0, description="requested/authorized this long: its last event again"
    )
    verification_grace_seconds: float = Field(
        120.0,
        ge=0,
        description="requires_verification this long past the code's expiry:"
        " declined verification_expired",
    )
    stuck_sweep_interval_seconds: float = Field(30.0, gt=0)

    # Overload (services/payment/overload.py): POST /v1/payments answers 503 overloaded
    # while this many payments are requested/authorized. About one second of the
    # pipeline's throughput bounds accepted payments' latency best; the default, a few
    # seconds' worth on this machine, sheds only sustained overload, not a caller's
    # burst (set it to the measured rate for tight latency). 0: never shed.
    overload_max_in_flight: int = Field(500, ge=0)
    # ... and while 5 or more of them have waited longer than this in their current
    # step: a bound on latency that follows the pipeline's real capacity. 0: off.
    overload_max_wait_seconds: float = Field(0.0, ge=0)
    overload_check_interval_seconds: float = Field(0.05, ge=0)
    overload_retry_after_seconds: int = Field(1, ge=1)

    # Payer codes (phone change, family binding, records session): DOMAIN.md "SMS
    # one-time codes".
    payer_code_ttl_seconds: int = Field(300, gt=0, description="a payer code is valid this long")
    payer_code_max_attempts: int = Field(5, gt=0, description="wrong tries before it dies")
    payer_code_resend_seconds: int = Field(
        60, ge=0, description="between two codes for the same step"
    )
    payer_codes_per_phone_hour: int = Field(
        5, gt=0, description="payer codes a phone may get in any hour (429 beyond)"
    )
    records_session_minutes: int = Field(
        10, gt=0, description="a records session (detailed records) lasts this long"
    )

    @model_validator(mode="after")
    def _read_premium_schedule(self) -> Self:
        path = self.premium_schedule_file
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"PAYMENT_PREMIUM_SCHEDULE_FILE: cannot read {path}: {exc.__class__.__name__}"
            ) from None
        try:
            self._premium_schedule = parse_schedule(text, name=str(path))
        except ScheduleError as exc:
            raise ValueError(f"PAYMENT_PREMIUM_SCHEDULE_FILE: {exc}") from None
        return self

    def payer_code_rules(self) -> CodeRules:
        return CodeRules(
            ttl=timedelta(seconds=self.payer_code_ttl_seconds),
            max_attempts=self.payer_code_max_attempts,
            resend_interval=timedelta(seconds=self.payer_code_resend_seconds),
            per_phone=self.payer_codes_per_phone_hour,
            window=timedelta(hours=1),
        )

    def records_session_key(self) -> bytes:
        """The key records-session tokens are made under (shared/sessions.py); the
        ledger checks them under the same purpose key."""
        return self.hash_key_for(KeyPurpose.RECORDS_SESSION)

    def premium_schedule(self) -> PremiumSchedule:
        return self._premium_schedule

    def premium_window(self) -> PeriodWindow:
        return PeriodWindow(
            years_back=self.premium_years_back, years_ahead=self.premium_years_ahead
        )

    def method_limits(self) -> dict[PaymentMethod, int]:
        return {
            "wallet": self.wallet_limit_fen,
            "bank_card": self.bank_card_limit_fen,
            "medical_account": self.medical_account_limit_fen,
        }

    def stuck_policy(self) -> StuckPolicy:
        return StuckPolicy(
            after=timedelta(seconds=self.stuck_after_seconds),
            verification_grace=timedelta(seconds=self.verification_grace_seconds),
        )

    def bank_policy(self) -> BankPolicy:
        return BankPolicy(
            deadline=timedelta(seconds=self.bank_deadline_seconds),
            retry_base=timedelta(seconds=self.bank_retry_base_seconds),
            retry_max=timedelta(seconds=self.bank_retry_max_seconds),
            watch=timedelta(hours=self.bank_watch_hours),
            arrival=timedelta(hours=self.bank_arrival_hours),
        )
