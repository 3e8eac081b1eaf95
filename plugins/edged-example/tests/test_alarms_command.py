"""`edged alarms FILE`, the example plugin's command, run as a user runs it: a table of
the jsonl actuator's events; a line that is not one is named and skipped, never a
traceback."""

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.plugin.events import Event, ModelRef
from edged_example import MAX_LINE_CHARS, event_line

ALARM = Event("alarm", "turbines", "turbine-2", 1_700_000_000.4, groups=("vibration", "rotation"),
              values={"roll": 3.0}, thresholds={"roll": 1.08}, model=ModelRef("wt", 1))
CLEAR = Event("clear", "turbines", "turbine-2", 1_700_000_030.0)


def alarms(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", "alarms", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_prints_each_event_as_a_row(tmp_path):
    path = tmp_path / "alarms.jsonl"
    path.write_text("".join(json.dumps(e.to_dict()) + "\n" for e in (ALARM, CLEAR)))
    done = alarms(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2023-11-14T22:13:20Z  alarm            turbine-2    vibration,rotation",
        "2023-11-14T22:13:50Z  clear            turbine-2    -",
    ]
    assert done.stderr == ""


def test_a_line_that_is_no_event_is_named_and_skipped(tmp_path):
    path = tmp_path / "alarms.jsonl"
    path.write_text(json.dumps(ALARM.to_dict()) + "\n"
                    + '{"kind": "alarm", "turb\n'  # cut short by a power loss
                    + "[1, 2]\n\n"
                    + json.dumps({**CLEAR.to_dict(), "time": "yesterday"}) + "\n"
                    + json.dumps(CLEAR.to_dict()) + "\n")
    done = alarms(path)
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 2  # the good ones, around the bad
    assert done.stderr.splitlines() == [
        f"edged alarms: {path}, line 2: not JSON: Unterminated string starting at "
        "(column 19); skipped",
        f"edged alarms: {path}, line 3: not a JSON object; skipped",
        f"edged alarms: {path}, line 5: not an event (kind, turbine, time, groups); skipped",
        "edged alarms: 3 line(s) skipped",
    ]


def test_a_missing_file_is_one_line_on_stderr(tmp_path):
    done = alarms(tmp_path / "nowhere.jsonl")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"edged alarms: cannot read {tmp_path / 'nowhere.jsonl'}: "
                           "No such file or directory\n")


def test_a_line_over_the_bound_is_not_parsed():
    with pytest.raises(ValueError, match=f"longer than {MAX_LINE_CHARS} characters"):
        event_line("[" * (MAX_LINE_CHARS + 1))


@pytest.mark.fuzz
@given(st.one_of(
    st.text(max_size=300),
    st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.sampled_from(["kind", "turbine", "time", "groups", "x"]),
                                   inner, max_size=5), max_leaves=20).map(json.dumps)))
def test_any_line_is_a_row_or_a_reason(line):
    try:
        row = event_line(line)
    except ValueError as exc:
        assert str(exc)
    else:
        assert isinstance(row, str) and "\n" not in row
