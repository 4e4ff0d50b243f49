"""Regions (GB/T 2260) and the insurance bureaus (医疗保障局) that collect for them.

One home for the region table every service uses: payment checks a premium's region,
the ledger names the payee (收款单位) on receipts, benchmarks pick real regions. The
table is ``shared/data/gb2260.tsv`` (its header cites the source and edition), read
once on first use.

Which bureau collects: a province or a prefecture-level city has its own bureau; a
district or county is served by the bureau of its prefecture-level city (the one that
collects premiums), a district of a municipality by the municipality's, and a
county-level city under the province itself (``XX90YY``, e.g. 仙桃市) by its own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from shared.digits import ascii_digits

# Six ASCII digits: use with ``fullmatch`` (``$`` alone lets a trailing newline by).
REGION_RE = re.compile(r"^[0-9]{6}$")
TABLE_PATH = Path(__file__).parent / "data" / "gb2260.tsv"

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


@functools.cache
def region_table() -> Mapping[str, str]:
    """Every GB/T 2260 code → its name (北京市, 深圳市, 南山区, …), read once."""
    table: dict[str, str] = {}
    for line in TABLE_PATH.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        code, name = line.split("\t")
        table[code] = name
    return MappingProxyType(table)


@functools.cache
def region_codes() -> frozenset[str]:
    """The codes a premium may name: in the table and under a served province."""
    return frozenset(code for code in region_table() if code[:2] in PROVINCES)


def collecting_region(region: str) -> str:
    """The region whose bureau collects for ``region`` (see the module docstring)."""
    table = region_table()
    if region.endswith("0000") or region[2:4] == "90":
        return region
    prefecture = region[:4] + "00"
    if prefecture in table:
        return prefecture
    return region[:2] + "0000"  # a district or county of a municipality


def bureau_name(region: str, names: Mapping[str, str] = BUREAU_NAMES) -> str:
    """The bureau collecting for ``region``: its name from ``names`` (the region's own,
    else its collecting region's), else ``{name}医疗保障局`` from the table."""
    if region in names:
        return names[region]
    collector = collecting_region(region) if region in region_table() else region
    if collector in names:
        return names[collector]
    name = region_table().get(collector)
    return f"{name}医疗保障局" if name else f"{region} 医疗保障局"


def region_problem(region: str) -> str | None:
    """Why ``region`` is not a region code a bureau collects for, or None."""
    if not (ascii_digits(region, 6) and REGION_RE.fullmatch(region)):
        return "a region code has 6 digits 0-9 (GB/T 2260), e.g. 110000 for Beijing"
    if region[:2] not in PROVINCES:
        return (
            f"{region[:2]} is not a province: a region code starts with its province's"
            " two digits (GB/T 2260), e.g. 110000 Beijing, 310000 Shanghai, 440300 Shenzhen"
        )
    if region not in region_table():
        return (
            f"{region} is not a region code of GB/T 2260 (no such region); use the code of"
            " an existing province, city or county, e.g. 440300 Shenzhen, 110105 Chaoyang"
        )
    return None
