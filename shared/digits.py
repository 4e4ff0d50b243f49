"""ASCII digits where a field means digits.

Python's ``\\d`` and ``str.isdigit`` and pydantic's ``pattern=`` (a Rust regex) all take
any Unicode digit: 110000 written in Arabic-Indic or full-width digits passes
``^\\d{6}$`` and then reaches keys, SQL and receipts as a string other than ``110000``.
Fields that mean digits (region codes, payer ids, periods, ID numbers, phones, SMS codes, receipt
codes) accept ``0-9`` only: write ``[0-9]`` in patterns, never ``\\d``, and use these.
"""

from __future__ import annotations

DIGIT = "[0-9]"


def ascii_digits(text: str, length: int | None = None) -> bool:
    """True when ``text`` is one or more ASCII digits (exactly ``length`` of them if given)."""
    ok = bool(text) and text.isascii() and text.isdigit()
    return ok and (length is None or len(text) == length)


def digits_pattern(length: int) -> str:
    """A pattern for exactly ``length`` ASCII digits, for ``re`` and pydantic alike."""
    return rf"^[0-9]{{{length}}}$"


def only_ascii_digits(text: str) -> str:
    """A pydantic ``AfterValidator``: ``text`` if its digits are ASCII, else ValueError.

    Refuses any non-ASCII digit anywhere in ``text`` (payer ids and periods mix digits
    with letters and dashes), so it can follow any pattern check.
    """
    if any(ch.isdigit() and not ch.isascii() for ch in text):
        raise ValueError("use the ASCII digits 0-9 (not full-width or other scripts' digits)")
    return text
