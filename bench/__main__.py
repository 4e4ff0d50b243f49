"""`make bench`: every benchmark, one after another, each printing its own figures.

Run one alone with `python -m bench.<name> --help`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = [
    ("backbone", ["--events", "20000"]),
    ("backbone", ["--events", "20000", "--rate", "1000", "--txn-size", "10"]),
    ("replay", ["--events", "100000"]),
    ("payments", ["--rates", "50,100,200", "--duration", "30"]),
    ("peer_bare", ["--rate", "500", "--duration", "30"]),
]


def main() -> int:
    here = Path(__file__).parent
    failed = 0
    for name, args in BENCHMARKS:
        if not (here / f"{name}.py").exists():
            continue
        print(f"\n== python -m bench.{name} {' '.join(args)}", flush=True)
        failed |= subprocess.call([sys.executable, "-m", f"bench.{name}", *args])  # noqa: S603
    return failed


if __name__ == "__main__":
    sys.exit(main())
