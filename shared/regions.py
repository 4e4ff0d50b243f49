"""Regions (GB/T 2260) and the insurance bureaus (医疗保障局) that collect for them.

One home for the region table every service uses: payment checks a premium's region,
the ledger names the payee (收款单位) on receipts, benchmarks pick real regions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REGION_RE = re.compile(r"^\d{6}$")

# Province-level prefixes of GB/T 2260 region codes served by the mainland medical
# insurance schemes (66: the Xinjiang Production and Construction Corps' own bureau).
PROVINCES = frozenset(
    f"{code}"
    for code in (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44,
                 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 66)
)  # fmt: skip

# The bureaus named by default; settings (``<PREFIX>BUREAU_NAMES``) may add or override.
BUREAU_NAMES: Mapping[str, str] = {
    "110000": "北京市医疗保障局",
    "310000": "上海市医疗保障局",
    "440100": "广州市医疗保障局",
}


def bureau_name(region: str, names: Mapping[str, str] = BUREAU_NAMES) -> str:
    """The bureau collecting for ``region``: its name from ``names``, else a generic one."""
    return names.get(region) or f"{region} 医疗保障局"


def region_problem(region: str) -> str | None:
    """Why ``region`` is not a region code a bureau collects for, or None."""
    if not REGION_RE.match(region):
        return "a region code has 6 digits (GB/T 2260), e.g. 110000 for Beijing"
    if region[:2] not in PROVINCES:
        return (
            f"{region[:2]} is not a province: a region code starts with its province's"
            " two digits (GB/T 2260), e.g. 110000 Beijing, 310000 Shanghai, 440300 Shenzhen"
        )
    return None
