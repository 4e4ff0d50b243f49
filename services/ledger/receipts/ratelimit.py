"""Per-client token buckets for the public receipt routes, and who the client is.

``SharedRateLimiter`` keeps the buckets in PostgreSQL (``receipts.store``), so the
limit holds however many ledger instances serve the routes. The client is the direct
peer's address, or, when that peer is a configured trusted proxy
(``LEDGER_TRUSTED_PROXIES``, CIDRs, default none), the nearest untrusted address in
``X-Forwarded-For``: a client cannot pick its own bucket by sending that header.
``api.create_app`` builds the one limiter of an app (``app.state.public_limiter``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from services.ledger.receipts import store
from services.ledger.receipts.store import Bucket, Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FORGET_EVERY = 1000  # takes between two sweeps of refilled buckets, per instance


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"10.0.0.0/8, 127.0.0.1"`` → the networks; a bare address is a /32 (/128)."""
    return tuple(
        ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()
    )


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: Sequence[Network]
) -> bool:
    return any(address.version == n.version and address in n for n in nets)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client a request counts against.

    ``X-Forwarded-For`` is read only when the direct ``peer`` is a trusted proxy; then
    from its right end (the hop nearest us), skipping trusted proxies, to the first
    address that is not one. Anything unreadable stops the walk at the last good hop.
    """
    if peer is None:
        return "unknown"
    client = _address(peer)
    if client is None or not _trusted(client, trusted):
        return peer
    hops = [hop for header in forwarded_for for hop in header.split(",")]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return str(client)


class SharedRateLimiter:
    """Token bucket per client address in PostgreSQL: ``per_minute`` tokens, refilled
    evenly; every instance on the same database shares them."""

    def __init__(self, per_minute: int, *, trusted_proxies: Sequence[Network] = ()) -> None:
        self.bucket = Bucket(capacity=float(per_minute), per_second=per_minute / 60.0)
        self.trusted_proxies = tuple(trusted_proxies)
        self._takes = 0

    def client_of(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        return client_address(peer, forwarded_for, self.trusted_proxies)

    async def take(self, conn: Reader, client: str) -> None:
        """One token from ``client``'s bucket, or ``RateLimited`` (429)."""
        self._takes += 1
        if self._takes % FORGET_EVERY == 0:
            await store.forget_full_buckets(conn, self.bucket)
        await store.take_token(conn, client, self.bucket)
