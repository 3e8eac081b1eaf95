"""structlog, configured once: a readable console on a terminal, JSON lines elsewhere.

Logs go to stderr, so that a command's own output (``edged demo --json``,
``edged plugins --json``) stays clean on stdout; journald records both streams.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class RateLimit:
    """Allows one log line per key per ``interval`` seconds and counts the rest, so a
    flood of bad input cannot flood the journal."""

    def __init__(self, interval: float = 10.0, clock=time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay silent; otherwise how many were suppressed since the last one."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)

    def warning(self, logger: Any, event: str, **fields: Any) -> None:
        """``logger.warning(event, ...)`` at most once per ``interval``, keyed by
        ``event``, with how many were suppressed since the last one."""
        suppressed = self.allow(event)
        if suppressed is not None:
            logger.warning(event, suppressed_since_last=suppressed, **fields)
