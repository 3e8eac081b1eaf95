"""structlog, configured once: a readable console on a terminal, JSON lines elsewhere.

Logs go to stderr, so that a command's own output (``edged demo --json``,
``edged plugins --json``) stays clean on stdout; journald records both streams.

When stderr is the journal, each line starts with its syslog priority (``<4>`` for a
warning, sd-daemon(3)): journald strips the prefix and files the line under it, so
``journalctl -p warning`` shows warnings and errors only. systemd says stderr is the
journal by ``$JOURNAL_STREAM`` (``device:inode`` of the stream it connected), which a
process compares with its own stderr: the variable is inherited, and a child whose
stderr was redirected to a file must not prefix its lines.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


#: sd-daemon(3)'s SD_* prefixes by structlog level name (``exception`` logs an error).
PRIORITIES = {"critical": 2, "error": 3, "exception": 3, "warning": 4, "warn": 4,
              "info": 6, "debug": 7}


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (ValueError, OSError):  # unset or malformed, or a stream without a descriptor
        return False


class JournalPriority:
    """Wraps a renderer: its line, prefixed with the event's syslog priority."""

    def __init__(self, renderer: Callable[..., str]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: dict[str, Any]) -> str:
        priority = PRIORITIES.get(event_dict.get("level", method), 6)
        return f"<{priority}>{self.renderer(logger, method, event_dict)}"


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Callable[..., str] = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    if stream_is_journal(sys.stderr):
        renderer = JournalPriority(renderer)
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
