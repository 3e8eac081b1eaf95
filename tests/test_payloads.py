"""The published JSON Schemas (docs/schema/alarm-v1.json, watch-v1.json): what edged
builds follows them, the examples in the docs follow them, and they refuse what they
should."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from edged.plugin.alarm_payload import COMMAND_KEYS, KEYS, alarm_payload, command_payload
from tests.support.payloads import assert_valid, schema, tracked_events

ROOT = Path(__file__).resolve().parents[1]
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.DOTALL)


def payloads() -> list[dict]:
    return [alarm_payload(event, "gw-7") for event in tracked_events()]


def test_every_event_kind_and_its_command_follow_the_schema():
    documents = payloads()
    documents += [command_payload(documents[0], "brake", ["vibration"]),
                  command_payload(documents[1], "resume", [])]
    for document in documents:
        assert_valid(document)
        assert list(document)[:len(KEYS)] == list(KEYS)
    assert [d["event"] for d in documents] == [
        "alarm", "clear", "sensor_stale", "sensor_recovered", "sensor_stale", "command",
        "command"]
    assert set(documents[-1]) == set(KEYS) | set(COMMAND_KEYS)


def test_the_schema_lists_the_keys_the_code_writes():
    common = schema("alarm-v1")["$defs"]["common"]
    assert common["required"] == list(KEYS)
    assert schema("alarm-v1")["$defs"]["command"]["required"] == list(COMMAND_KEYS)


def test_the_examples_in_the_docs_follow_the_schema():
    examples = [json.loads(block) for block in
                JSON_BLOCK.findall((ROOT / "docs" / "payloads.md").read_text())]
    assert [e["event"] for e in examples] == ["alarm", "command"]
    for example in examples:
        assert_valid(example)


def test_the_watch_records_in_the_docs_follow_their_schema():
    examples = [json.loads(block) for block in
                JSON_BLOCK.findall((ROOT / "docs" / "watch.md").read_text())]
    records = [e for e in examples if "schema" in e]  # not the request, not a log line
    assert [r["event"] for r in records] == ["hello", "decision", "error"]
    for record in records:
        assert_valid(record)


def _broken(mutate) -> dict:
    document = copy.deepcopy(payloads()[0])
    mutate(document)
    return document


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("primary"),                       # every key is always there
    lambda d: d.update(schema=2),                     # another version
    lambda d: d.update(event="alarmed"),
    lambda d: d.update(time="2024-06-10 06:13:20"),   # not ISO-8601 UTC with milliseconds
    lambda d: d["detail"].pop("rows"),                # an alarm ties to its reading
    lambda d: d.update(groups=[]),                    # an alarm names a group
    lambda d: d["values"].update(roll="high"),
    lambda d: d.update(model=None),                   # an alarm names its model
], ids=["missing key", "schema 2", "unknown event", "time", "no rows", "no group",
        "text score", "no model"])
def test_the_schema_refuses(mutate):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema("alarm-v1")).validate(_broken(mutate))


def test_an_undocumented_key_is_caught():
    # The published schema lets keys be added; the tests hold edged to what it documents.
    with pytest.raises(AssertionError, match="undocumented keys"):
        assert_valid(_broken(lambda d: d.update(extra=1)))
    with pytest.raises(AssertionError, match="undocumented detail"):
        assert_valid(_broken(lambda d: d["detail"].update(primary="vibration")))
