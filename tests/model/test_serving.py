"""serving.json (edged.model.serving): written by the daemon, read by ``edged model``,
which trusts nothing in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.model.serving import (
    MAX_SERVING_BYTES,
    SERVING,
    daemon_alive,
    process_started,
    read_serving,
    write_serving,
)

PIPELINES = {"turbines": {"store": "windturbine", "model": "windturbine", "version": 2,
                          "slot": "2-1a2b3c4d", "refused": None}}


def test_a_record_written_is_read_back_and_names_this_live_process(tmp_path):
    write_serving(tmp_path / "state", PIPELINES)
    record = read_serving(tmp_path / "state")
    assert record["pipelines"] == PIPELINES
    assert record["pid"] == os.getpid() and record["started"] == process_started(os.getpid())
    assert daemon_alive(record)
    assert not list((tmp_path / "state").glob(".*tmp"))  # replaced by rename


def test_a_record_of_a_process_gone_is_not_alive(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    gone = int(child.stdout)
    assert not daemon_alive({"pid": gone, "started": 1, "pipelines": {}})
    # A pid in use now, but by a process started at another time: not the writer.
    assert not daemon_alive({"pid": os.getpid(), "started": process_started(os.getpid()) - 1,
                             "pipelines": {}})


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[]", b'{"pid": "1", "pipelines": {}}', b'{"pid": 1}',
    b'{"pid": 1, "pipelines": {"p": 3}}', b'{"pid": 1, "pid": 2, "pipelines": {}}',
    b"[" * 10_000 + b"]" * 10_000, b" " * (MAX_SERVING_BYTES + 1),
])
def test_anything_else_is_no_record(tmp_path, content):
    (tmp_path / SERVING).write_bytes(content)
    assert read_serving(tmp_path) is None


@pytest.mark.fuzz
@given(content=st.one_of(
    st.binary(max_size=2048),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4))
    .map(lambda value: json.dumps({"pid": 1, "pipelines": {"p": value}}).encode())))
def test_any_file_is_a_record_of_the_shape_or_none(tmp_path_factory, content):
    directory = tmp_path_factory.mktemp("state")
    (directory / SERVING).write_bytes(content)
    record = read_serving(directory)
    if record is not None:
        assert isinstance(record["pid"], int)
        assert all(isinstance(p, dict) for p in record["pipelines"].values())
        daemon_alive(record)  # never raises
