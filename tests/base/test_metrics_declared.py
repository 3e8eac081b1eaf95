"""Counters.declare: a counter known before it counts, listed at 0 by samples()."""

from __future__ import annotations

from edged.base.metrics import Counters, Sample


def test_declared_counters_are_samples_at_zero_until_counted():
    counters = Counters()
    counters.declare("rows_rejected", {"reason": ("nan", "wide")}, pipeline="p")
    counters.declare("rounds_failed", pipeline="p")
    counters.declare("rows_rejected", {"reason": ("nan",)}, pipeline="p")  # again: no more
    counters.inc("rows_rejected", 3, pipeline="p", reason="wide")
    counters.inc("rows_rejected", pipeline="p", reason="odd")  # counted, never declared
    assert counters.samples("rows_rejected") == [
        Sample("rows_rejected", {"pipeline": "p", "reason": "nan"}, 0),
        Sample("rows_rejected", {"pipeline": "p", "reason": "odd"}, 1),
        Sample("rows_rejected", {"pipeline": "p", "reason": "wide"}, 3)]
    assert Sample("rounds_failed", {"pipeline": "p"}, 0) in counters.samples()
    # The reports (health, heartbeat, stats line) list what was counted only.
    assert counters.snapshot() == {"rows_rejected{pipeline=p,reason=odd}": 1,
                                   "rows_rejected{pipeline=p,reason=wide}": 3}
    assert counters.get("rows_rejected", pipeline="p", reason="nan") == 0
    assert counters.total("rows_rejected") == 4


def test_several_label_sets_declare_every_combination():
    counters = Counters()
    counters.declare("x", {"a": ("1", "2"), "b": ("u", "v")})
    assert [s.labels for s in counters.samples("x")] == [
        {"a": "1", "b": "u"}, {"a": "1", "b": "v"}, {"a": "2", "b": "u"},
        {"a": "2", "b": "v"}]
