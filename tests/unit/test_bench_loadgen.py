"""bench/loadgen.py: open loop from scheduled times, a timed-out request sent again
unchanged (same Idempotency-Key and body), keep-alive reuse; bench/procstat.py."""

from __future__ import annotations

import asyncio
import os

from bench.loadgen import HttpPool, json_bytes, open_loop
from bench.procstat import CpuMeter, cpu_seconds
from deploy.procs import port_owner_pids


async def test_a_timed_out_request_is_sent_again_with_the_same_key() -> None:
    seen: list[tuple[str, bytes]] = []
    hold = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = dict(
                    line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if line
                )
                body = await reader.readexactly(int(headers["Content-Length"]))
                key = headers["Idempotency-Key"]
                seen.append((key, body))
                if key == "k-0" and len(seen) == 1:
                    await hold.wait()  # the first try of k-0 never gets an answer
                answer = b'{"id": "p"}'
                writer.write(
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: "
                    + str(len(answer)).encode()
                    + b"\r\n\r\n"
                    + answer
                )
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = HttpPool(f"http://127.0.0.1:{port}")

    def make(i: int) -> tuple[dict[str, str], bytes]:
        return {"Idempotency-Key": f"k-{i}"}, json_bytes({"n": i})

    result = await open_loop(
        pool, count=3, rate=100.0, path="/v1/payments", make_request=make, timeout=0.3
    )
    hold.set()
    await pool.close()
    server.close()

    assert result.by_status() == {202: 3}
    first = result.outcomes[0]
    assert first.attempts == 2
    assert [body for key, body in seen if key == "k-0"] == [b'{"n":0}', b'{"n":0}']
    assert result.errors == {"TimeoutError": 1}
    # Latency counts from the scheduled time, so the timed-out try is inside it.
    assert all(o.answered >= o.due for o in result.outcomes)
    assert [o.due for o in result.outcomes] == sorted(o.due for o in result.outcomes)


def test_cpu_meter_reads_this_process() -> None:
    assert cpu_seconds(os.getpid()) is not None
    assert cpu_seconds(2**22 + 12345) is None  # no such pid
    meter = CpuMeter()
    meter.add("me", [os.getpid()])
    meter.start()
    sum(i * i for i in range(200_000))
    cpu = meter.stop()
    assert cpu["me"] >= 0
    assert meter.own_seconds > 0


async def test_the_broker_is_found_by_the_port_it_listens_on() -> None:
    """The benchmark counts the CPU of the broker it talks to, found by its listening
    port, not of every process whose command line looks like a broker."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert port_owner_pids(port) == [os.getpid()]
    finally:
        server.close()
        await server.wait_closed()
    assert port_owner_pids(port) == []
