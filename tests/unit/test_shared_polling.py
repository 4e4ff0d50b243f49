"""shared.polling's pure parts: how long a poller rests (``Pacing``), and the in-process
wake-up channels (listen, signal, unlisten; marks delivered on release, once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from shared import polling
from shared.polling import Pacing, Rest
from shared.runtime import PollingWorker


def test_a_full_batch_goes_again_at_once_and_a_partial_one_lingers() -> None:
    pacing = Pacing(0.1, linger=0.002, first_rest=0.005)
    assert pacing.after(500, full=True) == Rest(0.0, wakeable=False)
    assert pacing.after(3, full=False) == Rest(0.002, wakeable=False)


def test_empty_passes_back_off_doubling_up_to_the_longest_rest_and_work_resets_it() -> None:
    pacing = Pacing(0.1, linger=0.002, first_rest=0.005)
    rests = [pacing.after(0, full=False) for _ in range(7)]
    assert [r.seconds for r in rests] == pytest.approx([0.005, 0.01, 0.02, 0.04, 0.08, 0.1, 0.1])
    assert all(r.wakeable for r in rests)
    pacing.after(1, full=False)
    assert pacing.after(0, full=False) == Rest(0.005, wakeable=True)


def test_the_first_rest_never_exceeds_the_longest() -> None:
    pacing = Pacing(0.001, first_rest=0.005)
    assert pacing.after(0, full=False) == Rest(0.001, wakeable=True)


def test_a_signal_wakes_the_listeners_of_its_channel_until_they_unlisten() -> None:
    woken: list[str] = []
    a, b = (lambda: woken.append("a")), (lambda: woken.append("b"))
    polling.listen("t-chan-1", a)
    polling.listen("t-chan-2", b)
    try:
        polling.signal("t-chan-1")
        assert woken == ["a"]
    finally:
        polling.unlisten("t-chan-1", a)
        polling.unlisten("t-chan-2", b)
    polling.signal("t-chan-1")
    polling.unlisten("t-chan-1", a)  # twice: nothing
    assert woken == ["a"]


def test_marks_are_delivered_when_the_connection_is_released_once() -> None:
    woken: list[str] = []

    def wake() -> None:
        woken.append("x")

    conn: Any = SimpleNamespace(wakeups=set())
    polling.listen("t-chan-3", wake)
    try:
        polling.after_release(conn, "t-chan-3")
        polling.after_release(conn, "t-chan-3")
        assert woken == []  # marked only: the transaction may still be open
        polling.released(conn)
        polling.released(conn)
        assert woken == ["x"]
        polling.after_release(object(), "t-chan-3")  # not a pool connection: no mark
        assert woken == ["x"]
    finally:
        polling.unlisten("t-chan-3", wake)


class _Idle(PollingWorker):
    """Finds nothing, and would rest an hour between passes: only a wake-up ends it."""

    name = "idle"
    listen_to = "t-chan-worker"

    def __init__(self) -> None:
        super().__init__(poll_interval=3600, batch_size=10, first_rest=3600)
        self.passes = 0

    async def run_once(self) -> int:
        self.passes += 1
        if self.passes == 2:
            self.stop()
        return 0


async def test_a_signal_on_its_channel_ends_a_workers_rest_while_it_runs() -> None:
    worker = _Idle()
    task = asyncio.create_task(worker.run())
    while worker.passes < 1:
        await asyncio.sleep(0)
    polling.signal("t-chan-worker")
    await asyncio.wait_for(task, 30)  # the second pass ran (and stopped it)
    assert worker.passes == 2
    polling.signal("t-chan-worker")  # it stopped listening when it returned
    assert worker.passes == 2


class _Looking(PollingWorker):
    """Polls every millisecond; its look always says "nothing due"."""

    name = "looking"
    listen_to = "t-chan-look"

    def __init__(self) -> None:
        super().__init__(poll_interval=0.001, batch_size=10, first_rest=0.001)
        self.passes = 0
        self.looks = 0

    async def any_due(self) -> bool:
        self.looks += 1
        return False

    async def run_once(self) -> int:
        self.passes += 1
        return 0


async def _until(check: Callable[[], bool]) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(wait(), 30)


async def test_quiet_rests_end_in_a_look_and_a_wake_up_in_a_pass() -> None:
    worker = _Looking()
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: worker.looks >= 3)
        assert worker.passes == 1  # the first pass, then only looks
        polling.signal("t-chan-look")
        await _until(lambda: worker.passes == 2)  # woken: the pass runs, no look first
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
