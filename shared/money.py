"""Money is integer fen. Formatting for people lives here, in one place."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")
_DIGITS = "零壹贰叁肆伍陆柒捌玖"
_SMALL_UNITS = ("", "拾", "佰", "仟")
_BIG_UNITS = ("", "万", "亿", "兆")


def format_cny(fen: int) -> str:
    """38000 -> '380.00' (thousands separated: 5000000 -> '50,000.00')."""
    sign = "-" if fen < 0 else ""
    yuan, cents = divmod(abs(fen), 100)
    return f"{sign}{yuan:,}.{cents:02d}"


def _four_digits(n: int) -> str:
    out, zero = "", False
    for pos in range(3, -1, -1):
        d = n // 10**pos % 10
        if d == 0:
            zero = bool(out)
            continue
        if zero:
            out += "零"
            zero = False
        out += _DIGITS[d] + _SMALL_UNITS[pos]
    return out


def chinese_capitals(fen: int) -> str:
    """Amount in Chinese financial capitals: 38000 -> '叁佰捌拾元整', 10005 -> '壹佰元零伍分'."""
    if fen < 0:
        return "负" + chinese_capitals(-fen)
    yuan, cents = divmod(fen, 100)
    jiao, fen_ = divmod(cents, 10)
    words = ""
    if yuan:
        groups: list[int] = []
        while yuan:
            yuan, g = divmod(yuan, 10000)
            groups.append(g)
        need_zero = False
        for idx in range(len(groups) - 1, -1, -1):
            g = groups[idx]
            if g == 0:
                need_zero = bool(words)
                continue
            if words and (need_zero or g < 1000):
                words += "零"
            words += _four_digits(g) + _BIG_UNITS[idx]
            need_zero = False
        words += "元"
    if not jiao and not fen_:
        return (words or "零元") + "整"
    if jiao:
        words += _DIGITS[jiao] + "角"
    elif words:
        words += "零"
    if fen_:
        words += _DIGITS[fen_] + "分"
    else:
        words += "整"
    return words


def shanghai_day(moment: datetime) -> date:
    """The natural day (Asia/Shanghai) a UTC moment falls in: the daily cap's day."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Yibao keeps every time in UTC with tzinfo")
    return moment.astimezone(SHANGHAI).date()


def utcnow() -> datetime:
    return datetime.now(UTC)
