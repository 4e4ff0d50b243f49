"""Every error code the services raise is in the callers' catalogue (docs/callers.md,
"Error codes"; issue 14): a new code without a line there fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAISED = (
    re.compile(r'\bcode\s*=\s*"([a-z_]+)"'),
    re.compile(r'error_response\(\s*\d+,\s*"([a-z_]+)"'),
    re.compile(r'return\s+"([a-z_]+)",\s*"'),  # payer_domain's (code, message) pairs
)
# shared/http.py's mapping of HTTP errors, and payer_domain's pairs split over lines.
EXTRA = {"method_not_allowed", "http_error", "relative_not_identified", "relative_is_payer"}


def raised_codes() -> set[str]:
    found: set[str] = set(EXTRA)
    for path in [*ROOT.joinpath("services").rglob("*.py"), *ROOT.joinpath("shared").rglob("*.py")]:
        text = path.read_text()
        for pattern in RAISED:
            found.update(pattern.findall(text))
    return found


def catalogue() -> set[str]:
    text = (ROOT / "docs" / "callers.md").read_text()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`([a-z_]+)`", section))


def test_every_raised_code_is_in_the_catalogue() -> None:
    missing = raised_codes() - catalogue()
    assert not missing, f"add to docs/callers.md, Error codes: {sorted(missing)}"


def test_the_catalogue_names_real_codes() -> None:
    assert {"relative_not_bound", "already_paid", "request_in_flight"} <= catalogue()
