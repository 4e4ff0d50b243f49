"""CPU seconds of named groups of processes over a run, from /proc (Linux).

A group is a name and the pids it covers; each pid's user + system time is read from
``/proc/<pid>/stat`` at the start and at the end. A pid that exits during the run
counts up to its last reading (nothing, if it was never read again): the services'
processes and their pool connections live through a run.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None: gone or unreadable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (a scan of /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry.name))
    return found


class CpuMeter:
    """``start()`` then ``stop()``: CPU seconds per group in between."""

    def __init__(self) -> None:
        self.groups: dict[str, set[int]] = {}
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._own = 0.0
        self.own_seconds = 0.0

    def add(self, group: str, pids: Iterable[int]) -> None:
        """Count ``pids`` under ``group`` (pids added after ``start`` count from now)."""
        for pid in pids:
            if any(pid in members for members in self.groups.values()):
                continue
            self.groups.setdefault(group, set()).add(pid)
            if pid not in self._first and (seconds := cpu_seconds(pid)) is not None:
                self._first[pid] = seconds

    def start(self) -> None:
        self._first = {}
        for members in self.groups.values():
            for pid in members:
                if (seconds := cpu_seconds(pid)) is not None:
                    self._first[pid] = seconds
        self._own = own_cpu_seconds()

    def stop(self) -> dict[str, float]:
        self.own_seconds = own_cpu_seconds() - self._own
        result: dict[str, float] = {}
        for group, members in self.groups.items():
            total = 0.0
            for pid in members:
                now = cpu_seconds(pid)
                if now is not None:
                    self._last[pid] = now
                if pid in self._first and pid in self._last:
                    total += self._last[pid] - self._first[pid]
            result[group] = total
        return result
