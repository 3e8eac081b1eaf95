"""The data budget on its own: ceilings per priority, thinned heartbeats, the UTC day, and
its usage file across restarts (an injected wall clock, real files)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edged.base.metrics import Counters
from edged.cloud.budget import DataBudget
from edged.config.cloud import DataBudgetConfig
from tests.support.clock import FakeClock

#: 2026-11-25 23:59:00 UTC: a minute before a UTC midnight.
LATE = datetime(2026, 11, 25, 23, 59, tzinfo=UTC).timestamp()


def budget(tmp_path: Path, clock: FakeClock, counters: Counters | None = None,
           **config: float) -> DataBudget:
    # 10,000 bytes a day: captures until 7,000 used, heartbeats until 9,000.
    return DataBudget(DataBudgetConfig(**{"daily_mb": 0.01, **config}), tmp_path,
                      counters or Counters(), clock=clock)


def test_lower_priorities_stop_at_their_ceiling_while_critical_goes_over(tmp_path: Path):
    counters = Counters()
    b = budget(tmp_path, FakeClock(LATE), counters)
    assert b.ceilings == {"critical": None, "heartbeat": 9000, "capture": 7000}
    assert b.allows("capture", 7000) and not b.allows("capture", 7001)
    b.charge("capture", 6500)
    assert not b.allows("capture", 501)
    b.charge("heartbeat", 100)
    assert b.allows("heartbeat", 2400) and not b.allows("heartbeat", 2401)
    b.charge("heartbeat", 2400)
    b.charge("critical", 1500)  # never refused: 500 bytes of it past the budget
    assert b.allows("critical", 10**9)
    usage = b.usage()
    assert usage["used_bytes"] == {"critical": 1500, "heartbeat": 2500, "capture": 6500,
                                   "total": 10500}
    assert usage["over_bytes"] == 500 and usage["budget_bytes"] == 10_000
    assert usage["deferred"] == {"critical": 0, "heartbeat": 1, "capture": 2}
    assert usage["ceilings_bytes"] == {"heartbeat": 9000, "capture": 7000}
    assert counters.get("budget_deferred", priority="capture") == 2
    assert counters.get("budget_bytes", priority="critical") == 1500
    assert counters.get("budget_over_bytes", priority="critical") == 500
    b.charge("capture", 100)  # a charge made once over: all of it is over
    assert b.usage()["over_bytes"] == 600


def test_past_the_heartbeat_ceiling_one_heartbeat_per_period_goes_out(tmp_path: Path):
    clock = FakeClock(LATE - 20_000)
    b = budget(tmp_path, clock, over_budget_heartbeat_s=3600)
    b.charge("critical", 9500)
    b.charge("heartbeat", 100)
    # Over the ceiling: the next heartbeat an hour after the last one, not before.
    assert not b.allows("heartbeat", 100)
    clock.now += 3599
    assert not b.allows("heartbeat", 100)
    clock.now += 1
    assert b.allows("heartbeat", 100)
    b.charge("heartbeat", 100)
    assert not b.allows("heartbeat", 100)
    assert b.usage()["deferred"]["heartbeat"] == 3
    assert not b.allows("capture", 1)  # captures get no such allowance


def test_usage_starts_again_at_the_utc_midnight(tmp_path: Path):
    clock = FakeClock(LATE)
    b = budget(tmp_path, clock)
    assert b.seconds_until_reset() == 60
    b.charge("capture", 7000)
    assert not b.allows("capture", 1)
    clock.now += 59
    assert b.usage()["day"] == "2026-11-25" and b.usage()["reset_in_s"] == 1
    clock.now += 1
    usage = b.usage()
    assert usage["day"] == "2026-11-26" and usage["used_bytes"]["total"] == 0
    assert usage["deferred"]["capture"] == 0 and usage["reset_in_s"] == 86400
    assert b.allows("capture", 7000)


async def test_usage_survives_a_restart_on_the_same_day_only(tmp_path: Path):
    clock = FakeClock(LATE - 3600)
    async with budget(tmp_path, clock) as first:
        first.charge("heartbeat", 1234)
        first.charge("critical", 10)
        assert not first.allows("capture", 9000)
    saved = json.loads((tmp_path / "budget" / "usage.json").read_text())
    assert saved["day"] == "2026-11-25" and saved["used"]["heartbeat"] == 1234

    async with budget(tmp_path, clock) as second:
        assert second.usage()["used_bytes"] == {"critical": 10, "heartbeat": 1234,
                                                "capture": 0, "total": 1244}
        assert second.usage()["deferred"]["capture"] == 1
        assert second.last_heartbeat_at == clock.now

    clock.now += 3660  # the next UTC day: yesterday's usage is not today's
    async with budget(tmp_path, clock) as third:
        assert third.usage()["used_bytes"]["total"] == 0
        third.charge("capture", 5)
    assert json.loads((tmp_path / "budget" / "usage.json").read_text())["day"] == \
        "2026-11-26"


async def test_a_corrupt_usage_file_is_counted_and_the_day_starts_from_zero(tmp_path: Path):
    (tmp_path / "budget").mkdir()
    (tmp_path / "budget" / "usage.json").write_text('{"day": "2026-11-25", "used": 7')
    counters = Counters()
    async with budget(tmp_path, FakeClock(LATE), counters) as b:
        assert b.usage()["used_bytes"]["total"] == 0
    assert counters.get("budget_usage_corrupt") == 1


def test_an_unknown_priority_is_an_error(tmp_path: Path):
    b = budget(tmp_path, FakeClock(LATE))
    with pytest.raises(ValueError, match="unknown data budget priority 'bulk'"):
        b.allows("bulk", 1)
    with pytest.raises(ValueError, match="unknown data budget priority"):
        b.charge("alarms", 1)
