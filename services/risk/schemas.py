"""Risk's HTTP models: the internal challenge calls (payment makes them) and the public
daily-cap read."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ChallengeVerifyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=255)
    code: str = Field(max_length=32)


class ChallengeResendCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_id: str = Field(min_length=1, max_length=255)


class VerificationPublic(BaseModel):
    outcome: str
    attempts_left: int
    decline_code: str | None
    expires_at: datetime


class ResendPublic(BaseModel):
    payment_id: str
    challenge_id: str
    expires_at: datetime
    attempts_left: int
    next_resend_at: datetime


class DailyCapPublic(BaseModel):
    payer_id: str
    day: str
    cap: int
    used: int
    remaining: int
    resets_at: datetime
    wallet_cap: int
    wallet_used: int
    wallet_remaining: int
