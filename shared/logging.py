"""structlog, configured once: context first, UTC ISO time, masking, JSON off a terminal."""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from shared.masking import REDACTED, is_secret_name, mask_text, scrub

# Fields the logging machinery itself fills (never free text a caller could put a
# phone or ID number into): not scrubbed.
_STRUCTURAL = frozenset(
    {"service", "level", "timestamp", "request_id", "method", "status", "ms", "worker"}
)
# Every pattern ``mask_text`` masks (a phone, an ID number, a card) holds a run of at
# least 11 digits: a string without one is left as it is after one cheap search.
_MAY_HOLD_NUMBER = re.compile(r"\d{11}")


@functools.lru_cache(maxsize=1024)
def _secret_name(key: str) -> bool:
    return is_secret_name(key)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return mask_text(value) if _MAY_HOLD_NUMBER.search(value) else value
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub(value)


def mask_personal_data(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask phone and ID numbers in every field but the structural ones; redact
    secret-named fields. Same result as ``shared.masking.scrub`` on the whole event,
    at a fraction of its cost (one search per string instead of three substitutions,
    secret names looked up once)."""
    for key, value in event_dict.items():
        if key in _STRUCTURAL:
            continue
        if _secret_name(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub_value(value)
    return event_dict


def configure_logging(service: str, *, level: str = "INFO", json: bool | None = None) -> None:
    """Configure structlog and the standard library's root logger to match."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
