"""Webhook rules without I/O (issue 14): which event a state change is, the retry
schedule, the ordering rule, endpoint URLs, secrets and Standard Webhooks signatures.

Signing is the maintained ``standardwebhooks`` package (``Webhook.sign``): the
signature of message ``id`` at ``timestamp`` over ``body`` is ``v1,`` + base64 of
HMAC-SHA256(secret, ``{id}.{timestamp}.{body}``), the secret being the base64 after
``whsec_``. While a rotated-out secret still overlaps, both sign: the header carries
both signatures, space-separated, and a receiver accepts either.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from urllib.parse import urlsplit

from standardwebhooks.webhooks import Webhook

from services.payment.domain import PublicStatus
from services.payment.refund_domain import RefundPublicStatus

EventType = Literal[
    "payment.processing",
    "payment.requires_verification",
    "payment.succeeded",
    "payment.declined",
    "payment.failed",
    "refund.succeeded",
    "refund.failed",
]
EVENT_TYPES: tuple[EventType, ...] = (
    "payment.processing",
    "payment.requires_verification",
    "payment.succeeded",
    "payment.declined",
    "payment.failed",
    "refund.succeeded",
    "refund.failed",
)
ALL_TYPES = "*"


def payment_event(before: PublicStatus | None, after: PublicStatus) -> EventType | None:
    """The event of a payment moving from ``before`` (None: just created) to ``after``;
    None when what a caller sees did not change (e.g. requested -> authorized)."""
    if before == after:
        return None
    event: EventType = f"payment.{after}"  # type: ignore[assignment]
    return event


def refund_event(before: RefundPublicStatus, after: RefundPublicStatus) -> EventType | None:
    """A refund's event: only its outcome (succeeded or failed)."""
    if before == after or after == "processing":
        return None
    event: EventType = f"refund.{after}"  # type: ignore[assignment]
    return event


def wants(event_types: Iterable[str], event_type: str) -> bool:
    types = set(event_types)
    return ALL_TYPES in types or event_type in types


def retry_delay(
    attempts: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after the ``attempts``-th failed try (1, 2, ...): exponential
    (base, 2 base, 4 base, ... up to ``cap``) with "equal jitter" (half fixed, half
    random), so retries of many endpoints spread out but still grow."""
    ceiling: float = min(cap, base * 2.0 ** min(max(attempts - 1, 0), 62))
    draw: float = (rng or _RNG).random()
    return ceiling / 2 + draw * ceiling / 2


_RNG = random.SystemRandom()


@dataclass(frozen=True)
class Pending:
    """A delivery not yet made: its endpoint, payment and event order."""

    id: str
    endpoint_id: str
    payment_id: str
    event_seq: int


def deliverable(pending: Sequence[Pending]) -> list[Pending]:
    """The ordering rule: of the pending deliveries, those with no earlier pending one
    (lower event_seq) for the same payment to the same endpoint. (The worker applies
    the same rule in SQL; this is its statement, tested.)"""
    first: dict[tuple[str, str], int] = {}
    for p in pending:
        key = (p.endpoint_id, p.payment_id)
        first[key] = min(first.get(key, p.event_seq), p.event_seq)
    return [p for p in pending if p.event_seq == first[(p.endpoint_id, p.payment_id)]]


def new_secret() -> str:
    """``whsec_`` + base64 of 32 random bytes (the Standard Webhooks form)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secrets_: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` header: one ``v1,<sig>`` per secret, space-separated."""
    return " ".join(Webhook(s).sign(msg_id, timestamp, body) for s in secrets_)


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None. Always http(s) with a host and
    no credentials; unless ``allow_private``, https only and not a loopback, private,
    link-local or reserved address (nor ``localhost``). Names are not resolved here:
    a public name that resolves to a private address is the network's to block."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "a webhook URL is http or https"
    host = parts.hostname
    if not host:
        return "a webhook URL names a host"
    if parts.username or parts.password:
        return "a webhook URL carries no credentials"
    if allow_private:
        return None
    if parts.scheme != "https":
        return "a webhook URL is https"
    if host == "localhost" or host.endswith(".localhost"):
        return "a webhook URL is not on this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not address.is_global:
        return "a webhook URL is not a private, loopback or reserved address"
    return None
