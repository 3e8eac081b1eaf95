"""A daily byte budget for what the device uploads to the cloud (docs/health.md, "Data
budget"), so that a device on a cellular link does not run up a bill.

Every upload is charged to one of three priorities:

- ``critical``: alarms, IoT Jobs requests and status, replies to operator commands. Never
  refused: it may take the usage past the budget, and what goes over is counted.
- ``heartbeat``: heartbeats and shadow updates. Allowed until ``heartbeat_share`` of the
  day's budget is used; past that, one heartbeat per ``over_budget_heartbeat_s`` still
  goes out, so the fleet sees the device alive (and its usage).
- ``capture``: capture uploads. Allowed until ``capture_share`` of the budget is used.

A ceiling compares the day's total usage (every priority) with the share, so critical
traffic crowds out captures first and heartbeats next. Callers ask :meth:`allows` before
an upload they may skip, and :meth:`charge` what they actually sent (the cloud link
charges every MQTT publish itself). The day is the UTC day. Usage survives restarts in
``<state_dir>/budget/usage.json``, written at most every ``PERSIST_INTERVAL_S`` and at
stop, so a crash can lose up to that many seconds of charges.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog

from edged.base import strict_json
from edged.base.durable import makedirs_durably, read_at_most, write_durably
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.config import EdgedConfig
from edged.config.cloud import DataBudgetConfig

log = structlog.get_logger("edged.cloud.budget")

Priority = Literal["critical", "heartbeat", "capture"]
PRIORITIES: tuple[Priority, ...] = ("critical", "heartbeat", "capture")
#: Bytes in a budget megabyte: carriers bill in decimal megabytes.
MB = 1_000_000
#: Least time between two writes of the usage file (what a crash can lose).
PERSIST_INTERVAL_S = 5.0
USAGE_FILE = "usage.json"
#: A usage file is a few hundred bytes; a bigger one is not this class's.
MAX_USAGE_BYTES = 64 * 1024


def utc_day(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).date().isoformat()


class DataBudget:
    """The budget of one daemon. A graph component: entered, it loads today's usage from
    ``<state_dir>/budget/``; :meth:`run` writes it back every few seconds while it
    changes, and leaving writes it once more.

    ``clock`` is wall-clock seconds since the epoch (injected by tests to cross a UTC
    midnight). It belongs to the event loop: call :meth:`allows` and :meth:`charge`
    from it, not from a worker thread (an upload running in a thread charges once it
    returns)."""

    def __init__(self, config: DataBudgetConfig, state_dir: Path, counters: Counters, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.directory = Path(state_dir) / "budget"
        self.path = self.directory / USAGE_FILE
        self.counters = counters
        self.clock = clock
        self.daily_bytes = round(config.daily_mb * MB)
        self.ceilings: dict[Priority, int | None] = {
            "critical": None,
            "heartbeat": round(config.heartbeat_share * self.daily_bytes),
            "capture": round(config.capture_share * self.daily_bytes)}
        self._day = utc_day(clock())
        self._fresh_day()
        self.last_heartbeat_at: float | None = None
        self._dirty = False
        self._rate_limit = RateLimit(interval=60.0)

    def _fresh_day(self) -> None:
        self.used: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        self.deferred: dict[Priority, int] = dict.fromkeys(PRIORITIES, 0)
        self.over_bytes = 0

    # -- the public API ---------------------------------------------------------------

    def allows(self, priority: str, nbytes: int) -> bool:
        """Whether an upload of ``nbytes`` at ``priority`` may go out now. A refusal is
        counted (``deferred``); critical uploads are always allowed."""
        self._roll()
        ceiling = self.ceilings[_priority(priority)]
        if ceiling is None or self.total() + nbytes <= ceiling:
            return True
        if priority == "heartbeat" and self._thinned_heartbeat_due():
            return True
        self.deferred[priority] += 1  # type: ignore[index]
        self.counters.inc("budget_deferred", priority=priority)
        self._dirty = True
        return False

    def charge(self, priority: str, nbytes: int) -> None:
        """Count ``nbytes`` sent at ``priority``; what goes past the budget is counted
        as over."""
        self._roll()
        key = _priority(priority)
        before = self.total()
        self.used[key] += nbytes
        self.counters.inc("budget_bytes", nbytes, priority=key)
        over = max(0, before + nbytes - max(before, self.daily_bytes))
        if over:
            self.over_bytes += over
            self.counters.inc("budget_over_bytes", over, priority=key)
        if key == "heartbeat":
            self.last_heartbeat_at = self.clock()
        self._dirty = True

    def seconds_until_reset(self) -> float:
        """Seconds until the next UTC midnight, when the usage starts again from zero."""
        now = self.clock()
        midnight = datetime.fromisoformat(utc_day(now)).replace(tzinfo=UTC) + timedelta(1)
        return max(0.0, midnight.timestamp() - now)

    def total(self) -> int:
        return sum(self.used.values())

    def usage(self) -> dict[str, Any]:
        """Today's figures, as the heartbeat reports them (docs/health.md)."""
        self._roll()
        return {
            "day": self._day,
            "budget_bytes": self.daily_bytes,
            "used_bytes": {**self.used, "total": self.total()},
            "ceilings_bytes": {p: c for p, c in self.ceilings.items() if c is not None},
            "deferred": dict(self.deferred),
            "over_bytes": self.over_bytes,
            "reset_in_s": round(self.seconds_until_reset(), 3),
        }

    # -- as a component ---------------------------------------------------------------

    async def __aenter__(self) -> DataBudget:
        try:
            saved = await asyncio.to_thread(read_at_most, self.path, MAX_USAGE_BYTES)
        except FileNotFoundError:
            return self
        except OSError as exc:  # an unreadable state dir costs the day's count, no more
            log.warning("budget_usage_unreadable", path=str(self.path), error=repr(exc))
            return self
        self._restore(saved)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.save()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PERSIST_INTERVAL_S)
            await self.save()

    async def save(self) -> None:
        """Write the usage if it changed since the last write (in a thread)."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            await asyncio.to_thread(self._write, self._state())
        except OSError as exc:
            # A full disk costs the charges since the last write if the daemon stops
            # before it frees up, nothing more; retried every PERSIST_INTERVAL_S.
            self._dirty = True
            self.counters.inc("budget_usage_unsaved")
            self._rate_limit.warning(log, "budget_usage_unsaved", path=str(self.path),
                                     error=repr(exc))

    # -- internals --------------------------------------------------------------------

    def _thinned_heartbeat_due(self) -> bool:
        last = self.last_heartbeat_at
        return last is None or self.clock() - last >= self.config.over_budget_heartbeat_s

    def _roll(self) -> None:
        day = utc_day(self.clock())
        if day != self._day:
            log.info("budget_day_reset", day=day, previous=self._day,
                     used_bytes=self.total(), over_bytes=self.over_bytes)
            self._day = day
            self._fresh_day()
            self._dirty = True

    def _state(self) -> dict[str, Any]:
        return {"day": self._day, "used": self.used, "deferred": self.deferred,
                "over_bytes": self.over_bytes, "last_heartbeat_at": self.last_heartbeat_at}

    def _write(self, state: dict[str, Any]) -> None:
        makedirs_durably(self.directory, fsync=True)
        write_durably(self.path, [json.dumps(state).encode()], fsync=True)

    def _restore(self, saved: bytes) -> None:
        """Take up a usage file's figures; a file this class did not write (torn,
        hand-edited, garbage) is counted and today starts from zero."""
        try:
            state = strict_json.loads(saved, max_bytes=MAX_USAGE_BYTES, max_depth=4)
            day = state["day"]
            used = {p: _count(state["used"].get(p, 0)) for p in PRIORITIES}
            deferred = {p: _count(state["deferred"].get(p, 0)) for p in PRIORITIES}
            over = _count(state["over_bytes"])
            last = state.get("last_heartbeat_at")
            last = None if last is None else float(last)
            if last is not None and not math.isfinite(last):
                raise ValueError("last_heartbeat_at is not a finite time")
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            self.counters.inc("budget_usage_corrupt")
            log.warning("budget_usage_corrupt", path=str(self.path), error=repr(exc))
            return
        self.last_heartbeat_at = last
        if day != self._day:
            return  # another day's usage: today starts from zero
        self.used.update(used)  # type: ignore[arg-type]
        self.deferred.update(deferred)  # type: ignore[arg-type]
        self.over_bytes = over


def build_budget(config: EdgedConfig, counters: Counters) -> DataBudget | None:
    """The daemon's data budget, with a ``cloud.data_budget`` section (else None)."""
    cloud = config.cloud  # edged.cloud.link.CloudConfig
    if cloud is None or cloud.data_budget is None:
        return None
    return DataBudget(cloud.data_budget, config.state_dir, counters)


def _count(value: object) -> int:
    """A byte or refusal count from the usage file: a whole number, not below zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {str(value)[:40]!r}")
    return value


def _priority(priority: str) -> Priority:
    if priority not in PRIORITIES:
        raise ValueError(f"unknown data budget priority {priority!r} (one of "
                         f"{', '.join(PRIORITIES)})")
    return priority  # type: ignore[return-value]
