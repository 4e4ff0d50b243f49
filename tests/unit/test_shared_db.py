"""shared.db's pure parts for the runtime roles: names, quoting, the grants placeholder,
the DSN with the role's credentials, and the SCRAM-SHA-256 verifier (checked by
running RFC 7677's example exchange against it, as the server would)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.db import (
    GRANTS_FILE,
    ROLE_PLACEHOLDER,
    app_role_name,
    quote_ident,
    render_grants,
    scram_sha256_verifier,
    with_credentials,
)

SERVICES = Path(__file__).resolve().parents[2] / "services"


def test_role_names_and_identifier_quoting() -> None:
    assert app_role_name("ledger") == "yibao_ledger_app"
    assert quote_ident("yibao_ledger_app") == '"yibao_ledger_app"'
    assert quote_ident('we"ird; DROP') == '"we""ird; DROP"'
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")


def test_grants_name_the_role_as_a_quoted_identifier() -> None:
    sql = f"GRANT SELECT ON journal TO {ROLE_PLACEHOLDER};"
    assert (
        render_grants(sql, "yibao_ledger_app") == 'GRANT SELECT ON journal TO "yibao_ledger_app";'
    )
    assert render_grants(sql, 'x"y') == 'GRANT SELECT ON journal TO "x""y";'


@pytest.mark.parametrize("service", ["payment", "risk", "ledger", "notify"])
def test_every_service_has_grants_for_its_role_only(service: str) -> None:
    sql = (SERVICES / service / "migrations" / GRANTS_FILE).read_text()
    code = " ".join(line.split("--")[0].strip() for line in sql.splitlines())
    statements = [" ".join(s.split()) for s in code.split(";") if s.strip()]
    assert statements
    for statement in statements:
        assert statement.startswith("GRANT "), statement
        assert statement.endswith(f"TO {ROLE_PLACEHOLDER}"), statement
        assert "ALL" not in statement.split(" ON ")[0], statement  # privileges one by one
        assert "TRUNCATE" not in statement, statement


def test_the_ledger_may_only_read_and_append_the_journal() -> None:
    sql = (SERVICES / "ledger" / "migrations" / GRANTS_FILE).read_text()
    journal = [line for line in sql.splitlines() if " ON journal " in line]
    assert journal == ['GRANT SELECT, INSERT ON journal TO :"role";']


def test_the_runtime_dsn_keeps_the_server_and_swaps_the_login() -> None:
    dsn = "postgresql://postgres:secret@127.0.0.1:55432/yibao_ledger?sslmode=prefer&user=postgres"
    made = with_credentials(dsn, "yibao_ledger_app", "p@ss/word:1")
    parts = urlsplit(made)
    assert (parts.username, parts.hostname, parts.port) == ("yibao_ledger_app", "127.0.0.1", 55432)
    assert parts.password == "p%40ss%2Fword%3A1"  # percent-encoded, decoded by the driver
    assert parts.path == "/yibao_ledger"
    assert parse_qs(parts.query) == {"sslmode": ["prefer"]}
    assert "secret" not in made
    no_login = with_credentials("postgresql://db.example/x", "r", "pw")
    assert no_login == "postgresql://r:pw@db.example/x"


def test_the_scram_verifier_authenticates_rfc_7677s_example() -> None:
    # RFC 7677 section 3: user "user", password "pencil".
    client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
    server_first = (
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    )
    client_final_bare = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    server_signature = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")

    verifier = scram_sha256_verifier(
        "pencil", salt=base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), iterations=4096
    )
    scheme, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    iterations, salt = params.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    assert (scheme, iterations, salt) == ("SCRAM-SHA-256", "4096", "W22ZaJ0SNY7soEsUEjb6gQ==")

    # What the server does with the verifier: recover the client key from the proof.
    auth_message = f"{client_first_bare},{server_first},{client_final_bare}".encode()
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    assert hmac.new(server_key, auth_message, hashlib.sha256).digest() == server_signature


def test_the_scram_verifier_salts_each_time_and_refuses_non_ascii() -> None:
    assert scram_sha256_verifier("pw") != scram_sha256_verifier("pw")
    with pytest.raises(ValueError, match="ASCII"):
        scram_sha256_verifier("密码")
