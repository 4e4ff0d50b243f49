"""Who a public receipt request counts against (issue 11): the direct peer, or the
nearest untrusted hop of X-Forwarded-For when the peer is a trusted proxy."""

from __future__ import annotations

import pytest

from services.ledger.api import create_app
from services.ledger.config import LedgerSettings
from services.ledger.receipts.ratelimit import client_address, parse_networks
from shared.settings import ConfigurationError

TRUSTED = parse_networks("10.0.0.0/8, 192.0.2.10, fd00::/8")


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", [], "203.0.113.5"),
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # untrusted peer: header ignored
        ("10.1.2.3", [], "10.1.2.3"),  # the proxy's own request
        ("10.1.2.3", ["198.51.100.1"], "198.51.100.1"),
        ("10.1.2.3", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # forged left part
        ("10.1.2.3", ["198.51.100.1, 192.0.2.10"], "198.51.100.1"),  # past trusted hops
        ("10.1.2.3", ["6.6.6.6", "198.51.100.1, 10.9.9.9"], "198.51.100.1"),  # two headers
        ("10.1.2.3", ["garbage, 10.9.9.9"], "10.9.9.9"),  # unreadable: last good hop
        ("10.1.2.3", ["10.4.4.4, 10.9.9.9"], "10.4.4.4"),  # all trusted: the farthest
        ("fd00::1", ["2001:db8::7"], "2001:db8::7"),
        (None, ["198.51.100.1"], "unknown"),
    ],
)
def test_client_address(peer: str | None, forwarded: list[str], client: str) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def test_no_trusted_proxy_by_default() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIBAO_ENVIRONMENT", "development")
    monkeypatch.setenv("LEDGER_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1")
    settings = LedgerSettings.load()
    assert [str(n) for n in settings.proxy_networks()] == ["10.0.0.0/8", "127.0.0.1/32"]
    limiter = create_app(settings, pool=None).state.public_limiter  # type: ignore[arg-type]
    assert limiter.trusted_proxies == settings.proxy_networks()
    monkeypatch.setenv("LEDGER_TRUSTED_PROXIES", "not-a-network")
    with pytest.raises(ConfigurationError, match="LEDGER_TRUSTED_PROXIES"):
        LedgerSettings.load()
    monkeypatch.delenv("LEDGER_TRUSTED_PROXIES")
    assert LedgerSettings.load().proxy_networks() == ()
