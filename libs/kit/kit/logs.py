"""One logging baseline: structlog, JSON off a terminal, console on one.

Context (correlation id, mall, tenant, service) lives in contextvars so that every line a
request or message produces carries it without passing loggers around. Shopper identifiers
are masked before any renderer sees them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

#: Keys whose values identify a shopper; never logged in full.
SENSITIVE_KEYS = frozenset({"openid", "unionid", "phone", "phone_number", "card_code", "code"})
_PHONE = re.compile(r"(?<!\d)(1\d{2})\d{4}(\d{4})(?!\d)")


def mask(value: str) -> str:
    """Keep just enough of an identifier to tell two apart in a log."""
    if _PHONE.fullmatch(value):
        return _PHONE.sub(r"\1****\2", value)
    if len(value) <= 6:
        return "***"
    return f"{value[:4]}***{value[-2:]}"


def _mask_processor(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in SENSITIVE_KEYS.intersection(event):
        if isinstance(event[key], str) and event[key]:
            event[key] = mask(event[key])
    msg = event.get("event")
    if isinstance(msg, str):
        event["event"] = _PHONE.sub(r"\1****\2", msg)
    return event


def configure_logging(service: str, *, level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog for this process; call once from the composition root."""
    as_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _mask_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library (asyncpg, nats, aiohttp) stay quiet
    # unless something is wrong.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
