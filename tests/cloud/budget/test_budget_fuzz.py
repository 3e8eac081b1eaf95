"""The data budget's usage file under Hypothesis: whatever a torn write or a stray edit
left in ``<state_dir>/budget/usage.json`` is today's usage or a counted
``budget_usage_corrupt``, never another exception, within bounded time."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.cloud.budget import PRIORITIES, DataBudget, utc_day
from edged.config.cloud import DataBudgetConfig

pytestmark = pytest.mark.fuzz

NOW = 1_767_225_600.0
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
counts = st.dictionaries(st.sampled_from([*PRIORITIES, "other"]),
                         st.one_of(st.integers(), st.floats(), values), max_size=4)
states = st.fixed_dictionaries({}, optional={
    "day": st.one_of(st.just(utc_day(NOW)), values), "used": st.one_of(counts, values),
    "deferred": st.one_of(counts, values), "over_bytes": st.one_of(st.integers(), values),
    "last_heartbeat_at": st.one_of(st.floats(), st.integers(), values)})
files = st.one_of(st.binary(max_size=200), states.map(lambda s: json.dumps(s).encode()),
                  st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n))


@given(files)
def test_a_usage_file_is_restored_or_counted_corrupt(saved: bytes):
    counters = Counters()
    budget = DataBudget(DataBudgetConfig(daily_mb=1), "/nonexistent", counters,
                        clock=lambda: NOW)
    started = time.monotonic()
    budget._restore(saved)
    assert time.monotonic() - started < 2.0
    usage = budget.usage()  # whatever was taken up, the figures still add up
    assert all(isinstance(v, int) and v >= 0 for v in usage["used_bytes"].values())
    assert counters.get("budget_usage_corrupt") <= 1
