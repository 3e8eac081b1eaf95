"""Counters: labels kept as data, the text keys of the reports exactly as before, readers
safe beside a counting thread."""

from __future__ import annotations

import threading
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters, Sample, text_key


def _former_key(name: str, **labels: str) -> str:
    """The key the counters were stored under when they were keyed by text."""
    if not labels:
        return name
    return f"{name}{{{','.join(f'{k}={v}' for k, v in sorted(labels.items()))}}}"


def test_a_counter_is_named_by_its_labels_in_any_order():
    counters = Counters()
    counters.inc("rows_rejected", 2, reason="nan", pipeline="a")
    counters.inc("rows_rejected", pipeline="a", reason="nan")
    counters.inc("rows_rejected", pipeline="b", reason="nan")
    counters.inc("starts")
    assert counters.get("rows_rejected", pipeline="a", reason="nan") == 3
    assert counters.get("rows_rejected", reason="nan", pipeline="b") == 1
    assert counters.get("rows_rejected", pipeline="a") == 0  # exactly these labels
    assert counters.get("rows_rejected") == 0 and counters.get("starts") == 1
    assert counters.get("never") == 0


def test_total_sums_a_name_over_its_labels_and_only_that_name():
    counters = Counters()
    counters.inc("capture_dropped", 3, pipeline="p", reason="queue_full")
    counters.inc("capture_dropped", 4, pipeline="p", reason="budget")
    counters.inc("capture_dropped", 5, pipeline="q", reason="budget")
    counters.inc("capture_dropped_x", 100, pipeline="p")  # a longer name is another counter
    counters.inc("capture", 100)
    assert counters.total("capture_dropped") == 12
    assert counters.total("capture_dropped", pipeline="p") == 7
    assert counters.total("capture_dropped", reason="budget") == 9
    assert counters.total("capture_dropped", pipeline="p", reason="budget") == 4
    assert counters.total("capture_dropped", pipeline="r") == 0
    assert counters.total("capture") == 100


def test_the_text_key_is_the_documented_contract():
    # docs/health.md: the report's `counters` map is `name{label=value}` -> value.
    assert text_key("starts", ()) == "starts"
    assert text_key("rows_rejected", (("pipeline", "a"), ("reason", "nan"))) == (
        "rows_rejected{pipeline=a,reason=nan}")
    counters = Counters()
    counters.inc("rows_rejected", reason="nan", pipeline="a")
    counters.inc("starts")
    assert counters.snapshot() == {"rows_rejected{pipeline=a,reason=nan}": 1, "starts": 1}


def test_samples_hand_out_names_and_labels_in_the_snapshots_order():
    counters = Counters()
    counters.inc("jobs_finished", 2, status="SUCCEEDED")
    counters.inc("jobs", 7)
    counters.inc("jobs_finished", status="FAILED")
    counters.inc("jobs_finished")
    samples = counters.samples()
    assert samples == [Sample("jobs", {}, 7), Sample("jobs_finished", {}, 1),
                       Sample("jobs_finished", {"status": "FAILED"}, 1),
                       Sample("jobs_finished", {"status": "SUCCEEDED"}, 2)]
    assert [text_key(s.name, tuple(sorted(s.labels.items()))) for s in samples] == list(
        counters.snapshot())
    assert counters.samples("jobs_finished") == samples[1:]
    assert counters.samples("never") == []


NAMES = st.sampled_from(["a", "a_b", "ab", "rows", "rows_rejected", "z"])
LABELS = st.dictionaries(st.sampled_from(["k", "k_2", "pipeline", "reason"]),
                         st.text("ab_-.,=}{0", max_size=4), max_size=3)


@given(st.lists(st.tuples(NAMES, st.integers(0, 1000), LABELS), max_size=40))
def test_the_snapshot_is_what_text_keys_gave(incs):
    """Keys, values and order as when the counters were a Counter keyed by text: label
    values that spell another key (a "," or "=" in them) are summed into it as then."""
    counters, former = Counters(), Counter()
    for name, amount, labels in incs:
        counters.inc(name, amount, **labels)
        former[_former_key(name, **labels)] += amount
    snapshot = counters.snapshot()
    assert list(snapshot.items()) == sorted(former.items())
    for name, _, labels in incs:
        assert counters.total(name) == sum(
            v for k, v in former.items() if k == name or k.startswith(name + "{"))
        if not any(ch in value for value in labels.values() for ch in ",={}"):
            assert counters.get(name, **labels) == former[_former_key(name, **labels)]


def test_readers_are_safe_beside_a_thread_that_adds_counters():
    counters = Counters()

    def count() -> None:  # as a reload's graph build counts from its worker thread
        for n in range(20_000):
            counters.inc("built", component=str(n))

    worker = threading.Thread(target=count)
    worker.start()
    reads = 0
    while worker.is_alive() or not reads:  # new counters appear during the reads
        counters.snapshot()
        counters.samples()
        counters.total("built")
        reads += 1
    worker.join()
    assert counters.total("built") == len(counters.snapshot()) == 20_000
