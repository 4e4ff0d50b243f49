"""Settings of the development bank gateway: environment variables ``BANK_GATEWAY_*``."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.devbank.domain import parse_cutoff

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STORE = REPO / ".run" / "devbank" / "bank.sqlite3"


class BankSettings(BaseSettings):
    """The development bank (never production)."""

    model_config = SettingsConfigDict(env_prefix="BANK_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8010, ge=0, le=65535)
    store: Path = Field(DEFAULT_STORE, description="the bank's SQLite file")
    cutoff: str = Field("23:00", description="clearing cut-off, HH:MM Asia/Shanghai")
    environment: Literal["development", "test", "production"] = Field(
        "development", validation_alias=AliasChoices("YIBAO_ENVIRONMENT")
    )
    log_level: str = Field("INFO", validation_alias=AliasChoices("YIBAO_LOG_LEVEL"))
    log_json: bool | None = Field(None, validation_alias=AliasChoices("YIBAO_LOG_JSON"))

    @field_validator("cutoff")
    @classmethod
    def _cutoff_is_hh_mm(cls, value: str) -> str:
        parse_cutoff(value)
        return value.strip()

    @property
    def cutoff_time(self) -> time:
        return parse_cutoff(self.cutoff)
