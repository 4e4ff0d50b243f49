"""Clearing days (清算日) and the cut-off (日切). Pure.

A clearing day is an Asia/Shanghai date. A moment belongs to its Shanghai date, or
to the next one when it falls at or after the cut-off (default 23:00; ``00:00`` means
the natural day). Day D therefore runs from D-1 at the cut-off to D at the cut-off,
and D's cut-off instant is D at the cut-off time (Shanghai).

A posting's clearing day is decided once, at posting, and recorded in its entry: the
clearing day of ``posted_at``, but never a day already closed: after a forced (early)
close of D, postings go to the day after the last closed one. Replay reads the entry;
for entries from before settlement (no ``clearing_day``) ``entry_clearing_day``
derives it from ``posted_at`` and the default cut-off, with no clock.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta

from shared.errors import ValidationFailed
from shared.events import JournalEntryPosted
from shared.money import SHANGHAI

DEFAULT_CUTOFF = time(23, 0)
_CUTOFF_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_DAY_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_cutoff(text: str) -> time:
    """``"23:00"`` → 23:00; ``"00:00"`` is midnight: the natural day."""
    found = _CUTOFF_RE.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"cut-off {text!r} is not HH:MM (00:00-23:59); e.g. 23:00")
    return time(int(found.group(1)), int(found.group(2)))


def parse_day(text: str, param: str = "day") -> date:
    """A clearing day as written in URLs and events, ``YYYY-MM-DD``."""
    if _DAY_RE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    raise ValidationFailed(
        f"{param} {text!r} is not a date; write it as YYYY-MM-DD, e.g. 2027-01-31", param=param
    )


def clearing_day_of(moment: datetime, cutoff: time = DEFAULT_CUTOFF) -> date:
    """The clearing day ``moment`` falls in (see the module docstring)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Yibao keeps every time in UTC with tzinfo")
    local = moment.astimezone(SHANGHAI)
    late = cutoff != time(0) and local.time() >= cutoff
    return local.date() + timedelta(days=1) if late else local.date()


def cutoff_instant(day: date, cutoff: time = DEFAULT_CUTOFF) -> datetime:
    """When clearing day ``day`` ends: ``day`` at the cut-off, Shanghai (the next
    midnight for a ``00:00`` cut-off)."""
    if cutoff == time(0):
        return datetime.combine(day + timedelta(days=1), time(0), SHANGHAI)
    return datetime.combine(day, cutoff, SHANGHAI)


def posting_day(posted_at: datetime, cutoff: time, last_closed: date | None) -> date:
    """The clearing day a posting at ``posted_at`` belongs to: its own, or the day
    after the last closed one when that is later (a day closed early stays closed)."""
    day = clearing_day_of(posted_at, cutoff)
    if last_closed is not None and day <= last_closed:
        return last_closed + timedelta(days=1)
    return day


def entry_clearing_day(entry: JournalEntryPosted) -> date:
    """The entry's recorded clearing day; derived for entries from before settlement."""
    if entry.clearing_day is not None:
        return date.fromisoformat(entry.clearing_day)
    return clearing_day_of(entry.posted_at, DEFAULT_CUTOFF)


def bank_day(confirmed_at: datetime, cutoff: time = DEFAULT_CUTOFF) -> date:
    """The bank's clearing day of a booking it confirmed at ``confirmed_at`` (the bank
    keeps the same cut-off; force-closing a day of ours does not move the bank's)."""
    return clearing_day_of(confirmed_at, cutoff)
