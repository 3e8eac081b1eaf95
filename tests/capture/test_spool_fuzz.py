"""The readers of what a start finds in a capture spool, under Hypothesis: segment
names, record lines, upload intents, the captures-on-demand file and the agent's status
log, on real files. Whatever a torn disk or a stray edit left: a value or the spool's
own typed rejection (SpoolCorrupt, or a counted "unreadable"), never another exception,
within bounded time."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.capture.pipeline_capture import REQUESTS_FILE, PipelineCapture
from edged.capture.segments import (
    Segment,
    SegmentSpool,
    SpoolCorrupt,
    Upload,
    decode_line,
    parse_intent,
)
from edged.capture.spool import StatusLog
from edged.config.capture import PipelineCaptureSpec

pytestmark = pytest.mark.fuzz

SECONDS = 2.0  # any one call, at most
SEGMENT_NAMES = st.builds(lambda seq, kind, count: f"{seq:016d}-{kind}-{count}.jsonl",
                          st.integers(0, 10**16), st.sampled_from("an"), st.integers(0, 99))
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=20)
records = st.fixed_dictionaries({}, optional={
    "id": values, "time": st.one_of(st.floats(), st.integers(), values),
    "model_name": st.one_of(st.text(max_size=20), values),
    "model_version": values})
deep = st.integers(1, 5_000).map(lambda n: "[" * n + "1" + "]" * n)


def as_bytes(value) -> bytes:
    return json.dumps(value).encode()


texts = st.one_of(
    st.binary(max_size=300),
    deep.map(str.encode),
    values.map(as_bytes),
    records.map(as_bytes),
    st.builds(lambda b, names: as_bytes({"batch_id": b, "segments": names}),
              st.one_of(st.uuids().map(str), values),
              st.one_of(st.lists(st.one_of(SEGMENT_NAMES, st.text(max_size=20))), values)),
)


def timed(call, *args):
    started = time.monotonic()
    result = call(*args)
    assert time.monotonic() - started < SECONDS
    return result


@given(st.one_of(SEGMENT_NAMES, st.text(max_size=40)), st.integers(0, 2**40))
def test_a_segment_name_is_a_segment_or_none(name: str, size: int):
    segment = timed(Segment.parse, name, size)
    assert segment is None or (isinstance(segment, Segment) and segment.name == name)


@given(texts)
def test_an_intent_is_an_upload_or_spool_corrupt(body: bytes):
    try:
        upload = timed(parse_intent, body)
    except SpoolCorrupt:
        return
    assert isinstance(upload, Upload) and str(uuid.UUID(upload.batch_id)) == upload.batch_id
    assert all(Segment.parse(name, 0) is not None for name in upload.segments)


@given(texts)
def test_a_spool_line_is_a_record_with_its_partition_or_spool_corrupt(line: bytes):
    try:
        record, where = timed(decode_line, line, "dev-1")
    except SpoolCorrupt:
        return
    assert isinstance(record, dict) and where.startswith("device=dev-1/model=")


@given(st.lists(st.tuples(st.sampled_from(["segments", "uploads"]),
                          st.one_of(SEGMENT_NAMES, st.uuids().map(lambda u: f"{u}.json"),
                                    st.text("abc.-_", min_size=1, max_size=12).filter(
                                        lambda n: n not in (".", ".."))),
                          texts), max_size=6))
def test_a_spool_opens_whatever_its_files_hold(files):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for folder, name, body in files:
            (root / folder).mkdir(exist_ok=True)
            (root / folder / name).write_bytes(body)
        spool = SegmentSpool(root, fsync=False)
        try:
            segments, uploads, corrupt = timed(spool.open)
        finally:
            spool.close()
    names = {s.name for s in segments}
    assert all(set(u.segments) <= names for u in uploads)
    assert corrupt >= 0


@given(texts)
def test_the_requests_file_is_resumed_or_counted_unreadable(body: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / REQUESTS_FILE).write_bytes(body)
        counters = Counters()
        spec = PipelineCaptureSpec.model_validate(
            {"rate": {"every": 1}, "destination": {"type": "disk", "path": tmp}})
        capture = PipelineCapture("p", spec, device="d", root=root, counters=counters)
        saved = timed(capture._read_requests)
        assert isinstance(saved, dict)
        assert saved or counters.get("capture_on_demand_unreadable", pipeline="p") <= 1
        asyncio.run(_resume(capture, saved))


async def _resume(capture: PipelineCapture, saved: dict) -> None:
    capture._resume_requests(saved)


@given(st.lists(texts, max_size=5))
def test_the_status_log_loads_whatever_it_holds(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "status.jsonl"
        path.write_bytes(b"\n".join(lines))
        statuses = timed(StatusLog(path, keep=10, fsync=False).load)
    assert all(isinstance(k, str) and v in ("SUCCESS", "FAILURE")
               for k, v in statuses.items())
