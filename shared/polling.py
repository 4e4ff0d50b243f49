"""Polling without NOTIFY: adaptive rests, and in-process wake-ups delivered once a
pool connection's work is over.

Why not LISTEN/NOTIFY (issue 13): ``pg_notify`` takes PostgreSQL's cluster-wide NOTIFY
lock at commit, so every writing transaction of every service waited its turn behind
every other one. The pollers (the outbox relay, notify's SMS sender, payment's bank
worker) now poll adaptively (``Pacing``) and are woken early, in this process only,
by the code that stages their work:

* the writer calls ``after_release(conn, CHANNEL)`` inside its transaction (e.g.
  ``shared.outbox.write_outbox``); that only marks the connection;
* when the connection goes back to the pool (``shared.db``'s pool reset, which runs
  after asyncpg has ended the transaction: committed, or rolled back when left open),
  ``released(conn)`` signals every marked channel, so a poller is never woken before
  the commit it is woken for;
* a poller ``listen``s on its channel for as long as it runs; ``signal`` calls its
  callback (usually ``PollingWorker.wake``: set an ``asyncio.Event``).

A wake-up is only a hint, like NOTIFY was: a rolled-back transaction wakes a poller
for nothing (it looks and finds nothing), and a write through a connection that is not
a ``shared.db`` pool connection, or in another process (another instance), wakes no
one here: the poll finds it within the poller's longest rest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import asyncpg

LINGER = 0.002  # after a pass that found work: let the next batch gather
FIRST_REST = 0.005  # after the first empty pass; doubled up to the poll interval


class Rest(NamedTuple):
    """How long to rest before the next pass, and whether a wake-up ends it early."""

    seconds: float
    wakeable: bool


class Pacing:
    """How long a poller rests between passes: polling replaced LISTEN/NOTIFY, whose
    lock serialized every commit in the cluster, so the rests adapt to the load.

    * a full batch: no rest, there is more;
    * a pass that found work: ``linger`` (a few ms) that a wake-up does not cut short,
      so the writes committed meanwhile join the next pass: under load batches grow
      instead of passes multiplying;
    * an empty pass: ``first_rest``, doubled after every further empty pass up to
      ``longest_rest``; a wake-up (``signal``, after an in-process commit) ends it
      at once, so an idle system answers its own writes immediately and
      anyone else's within ``longest_rest``.
    """

    def __init__(
        self, longest_rest: float, *, linger: float = LINGER, first_rest: float = FIRST_REST
    ) -> None:
        self.longest_rest = longest_rest
        self.linger = linger
        self.first_rest = min(first_rest, longest_rest)
        self._idle = self.first_rest

    def after(self, handled: int, *, full: bool) -> Rest:
        """The rest after a pass that handled ``handled`` items (``full``: a whole batch)."""
        if handled:
            self._idle = self.first_rest
            return Rest(0.0 if full else self.linger, wakeable=False)
        rest = self._idle
        self._idle = min(rest * 2, self.longest_rest)
        return Rest(rest, wakeable=True)


Wake = Callable[[], None]

_listeners: dict[str, list[Wake]] = {}


def listen(channel: str, wake: Wake) -> None:
    """Call ``wake()`` on every ``signal(channel)`` from now on, until ``unlisten``."""
    _listeners.setdefault(channel, []).append(wake)


def unlisten(channel: str, wake: Wake) -> None:
    """Stop calling ``wake`` for ``channel`` (nothing when it was not listening)."""
    callbacks = _listeners.get(channel, [])
    if wake in callbacks:
        callbacks.remove(wake)


def signal(channel: str) -> None:
    """Wake every listener of ``channel`` in this process now."""
    for wake in tuple(_listeners.get(channel, ())):
        wake()


def after_release(conn: asyncpg.Connection, channel: str) -> None:
    """Signal ``channel`` once ``conn`` goes back to its pool, its transaction over.

    Only a ``shared.db`` pool connection (``PoolConnection``) carries the mark; on any
    other connection this does nothing and the poll finds the work.
    """
    pending: set[str] | None = getattr(conn, "wakeups", None)
    if pending is not None:
        pending.add(channel)


def released(conn: asyncpg.Connection) -> None:
    """The connection is back in the pool: signal what its work marked, once."""
    pending: set[str] | None = getattr(conn, "wakeups", None)
    if not pending:
        return
    channels = tuple(pending)
    pending.clear()
    for channel in channels:
        signal(channel)
