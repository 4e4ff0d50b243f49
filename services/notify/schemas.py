"""notify's HTTP API models: what was sent for a payment (never the text)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from services.notify.domain import Kind, State
from services.notify.store import NotificationView


class NotificationPublic(BaseModel):
    id: uuid.UUID
    kind: Kind
    state: State
    phone: str  # masked
    attempts: int
    sent_at: datetime | None

    @classmethod
    def of(cls, view: NotificationView) -> NotificationPublic:
        return cls(
            id=view.id,
            kind=view.kind,
            state=view.state,
            phone=view.phone_masked,
            attempts=view.attempts,
            sent_at=view.sent_at,
        )
