"""The heartbeat's one decoder of what comes from outside, the shadow service's
``update/rejected`` answer, under Hypothesis: any payload is counted and logged (at a
limited rate), never an exception, within bounded time."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.cloud.heartbeat import Heartbeat
from edged.config.cloud import HealthConfig
from edged.health.report import Health

pytestmark = pytest.mark.fuzz

SHADOW = "$aws/things/t/shadow/name/edged-health/update"
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
payloads = st.one_of(st.binary(max_size=300), values.map(lambda v: json.dumps(v).encode()),
                     st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n))


@given(payloads, st.sampled_from(["/rejected", "/accepted", "/other"]))
def test_any_shadow_answer_is_counted_never_raised(payload: bytes, suffix: str):
    counters = Counters()
    health = Health({}, counters, Path("/nonexistent"), device="t")
    beat = Heartbeat(HealthConfig(), link=None, thing="t", health=health,  # type: ignore[arg-type]
                     counters=counters)
    started = time.monotonic()
    beat.dispatch(aiomqtt.Message(SHADOW + suffix, payload, 1, False, 1, None))
    assert time.monotonic() - started < 2.0
    if suffix != "/other":
        assert sum(counters.snapshot().values()) == 1
