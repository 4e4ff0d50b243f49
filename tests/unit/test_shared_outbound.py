"""shared/outbound.py: the lean JSON poster against small in-process HTTP servers
(each answers with a framing a real server may use)."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from shared.outbound import JsonPoster, Origins, OutboundError

Answer = Callable[[bytes, int], Awaitable[bytes | None]]  # request, its index → reply


@asynccontextmanager
async def server(
    answer: Answer, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP/1.1 server whose answers ``answer`` writes (None: close the connection
    without answering). Yields its origin and the requests it read."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                length = (
                    int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    if b"content-length:" in lower
                    else 0
                )
                request = head + await reader.readexactly(length)
                seen.append(request)
                reply = await answer(request, len(seen) - 1)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if b"Connection: close" in reply:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", seen
    finally:
        srv.close()


def _fixed(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_posts_json_and_reuses_the_connection() -> None:
    async def answer(request: bytes, _i: int) -> bytes:
        body = json.loads(request.split(b"\r\n\r\n", 1)[1])
        return _fixed(json.dumps({"got": body["text"]}, ensure_ascii=False).encode())

    async with server(answer) as (origin, seen):
        poster = JsonPoster(origin, timeout=2)
        first = await poster.post("/sms", {"text": "验证码"})
        second = await poster.post("/sms", {"text": "again"})
        await poster.close()
    assert (first.status_code, first.json()) == (200, {"got": "验证码"})
    assert second.json() == {"got": "again"}
    assert poster.opened == 1
    assert seen[0].startswith(b"POST /sms HTTP/1.1\r\n")
    assert b"Content-Type: application/json" in seen[0]


async def test_origins_keep_a_poster_per_origin_with_path_query_and_headers() -> None:
    async def answer(_request: bytes, _i: int) -> bytes:
        return _fixed(b"{}")

    async with server(answer) as (first, seen_first), server(answer) as (second, seen_second):
        origins = Origins(timeout=2, max_origins=1)
        signed = {"webhook-id": "msg_1", "webhook-signature": "v1,abc="}
        await origins.send(f"{first}/hooks/a?x=1", b'{"n":1}', signed)
        await origins.send(f"{first}/hooks/a?x=1", b'{"n":2}', signed)
        await origins.send(f"{second}/hooks/b", b'{"n":3}')  # the first origin's closes
        await origins.send(f"{first}/hooks/a", b'{"n":4}')
        with pytest.raises(ValueError, match="webhook-id"):
            await origins.send(f"{first}/hooks/a", b"{}", {"webhook-id": "x\r\nEvil: 1"})
        await origins.close()
    assert [r.split(b"\r\n", 1)[0] for r in seen_first] == [
        b"POST /hooks/a?x=1 HTTP/1.1",
        b"POST /hooks/a?x=1 HTTP/1.1",
        b"POST /hooks/a HTTP/1.1",
    ]
    assert b"\r\nwebhook-id: msg_1\r\nwebhook-signature: v1,abc=\r\n" in seen_first[0]
    assert seen_first[2].endswith(b'{"n":4}') and b"webhook-id" not in seen_first[2]
    assert seen_second[0].startswith(b"POST /hooks/b HTTP/1.1") and len(seen_first) == 3


async def test_gets_with_no_body() -> None:
    async def answer(_request: bytes, _i: int) -> bytes:
        return _fixed(b'{"status":"pending"}')

    async with server(answer) as (origin, seen):
        poster = JsonPoster(origin + "/bank", timeout=2)
        reply = await poster.get("/debits/d_1")
        await poster.close()
    assert reply.json() == {"status": "pending"}
    assert seen[0].startswith(b"GET /bank/debits/d_1 HTTP/1.1\r\n")
    assert seen[0].endswith(b"\r\n\r\n") and b"content-length" not in seen[0].lower()


async def test_reads_chunked_and_close_delimited_answers() -> None:
    async def answer(_request: bytes, i: int) -> bytes:
        if i == 0:
            return (
                b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n"
                b'5\r\n{"err\r\n11\r\nor": {"code": 1}}\r\n0\r\n\r\n'
            )
        return b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"ok": true}'

    async with server(answer) as (origin, _seen):
        poster = JsonPoster(origin, timeout=2)
        chunked = await poster.post("/x", {})
        closing = await poster.post("/x", {})
        third = await poster.post("/x", {})
        await poster.close()
    assert (chunked.status_code, chunked.json()) == (503, {"error": {"code": 1}})
    assert not chunked.is_success
    assert closing.json() == {"ok": True}
    assert third.json() == {"ok": True}
    assert poster.opened == 2  # the chunked answer's connection was kept; the other closed


async def test_a_kept_connection_the_server_closed_is_replaced_once() -> None:
    async def answer(_request: bytes, i: int) -> bytes | None:
        return None if i == 1 else _fixed(b"{}")

    async with server(answer) as (origin, seen):
        poster = JsonPoster(origin, timeout=2)
        await poster.post("/sms", {"n": 1})
        again = await poster.post("/sms", {"n": 2})  # its kept connection answers nothing
        await poster.close()
    assert again.status_code == 200
    assert len(seen) == 3
    assert poster.opened == 2


async def test_no_answer_in_time_and_nobody_listening_are_outbound_errors() -> None:
    async def slow(_request: bytes, _i: int) -> bytes:
        await asyncio.sleep(5)
        return _fixed(b"{}")

    async with server(slow) as (origin, _seen):
        poster = JsonPoster(origin, timeout=0.2)
        with pytest.raises(OutboundError) as timeout:
            await poster.post("/sms", {})
    assert timeout.value.kind == "timeout"
    with pytest.raises(OutboundError) as refused:
        await JsonPoster(origin, timeout=1).post("/sms", {})
    assert refused.value.kind == "connect"


async def test_an_answer_cut_short_is_an_error_not_a_reply() -> None:
    async def cut(_request: bytes, _i: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}"

    async with server(cut) as (origin, _seen):
        poster = JsonPoster(origin, timeout=0.5)
        with pytest.raises(OutboundError):
            await poster.post("/sms", {})


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for 127.0.0.1, and a client context that
    trusts exactly that certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sms.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert_file, key_file)
    client_side = ssl.create_default_context(cafile=str(cert_file))
    return server_side, client_side


async def test_an_https_origin_is_spoken_to_over_tls(tmp_path: Path) -> None:
    server_side, client_side = _self_signed(tmp_path)

    async def ok(_request: bytes, _n: int) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async with server(ok, tls=server_side) as (origin, seen):
        poster = JsonPoster(origin, timeout=5, tls=client_side)
        reply = await poster.post("/sms", {"x": 1})
        await poster.close()
        assert reply.status_code == 200
        assert json.loads(seen[0].split(b"\r\n\r\n", 1)[1]) == {"x": 1}
        # The system's trust store does not know this certificate: refused, not sent.
        untrusting = JsonPoster(origin, timeout=5)
        with pytest.raises(OutboundError):
            await untrusting.post("/sms", {"x": 2})
        await untrusting.close()
        assert len(seen) == 1
