"""What docs/jobs.md and the README show a fleet operator works on AWS: the IoT policy
grants what the device does (``topicfilter/`` for Subscribe, ``topic/`` for Publish and
Receive, ``client/`` for Connect), and every pre-signed URL placeholder is in a form AWS
takes."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest

from edged.cloud.jobs import protocol
from tests.support.jobs_peer import _PLACEHOLDER, placeholder_url

ROOT = Path(__file__).resolve().parents[3]
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)
THING = "turbine-gw-01"
RESOURCE = re.compile(r"arn:aws:iot:[a-z0-9-]+:\d{12}:(client|topic|topicfilter)/(.+)")
KINDS = {"iot:Connect": "client", "iot:Subscribe": "topicfilter",
         "iot:Publish": "topic", "iot:Receive": "topic"}


def policy() -> dict:
    [found] = [json.loads(block) for block in JSON_BLOCK.findall(
        (ROOT / "docs" / "jobs.md").read_text()) if '"Statement"' in block]
    return found


def granted(action: str) -> list[str]:
    """The patterns ``action`` is allowed on for THING, each checked to be of the
    resource kind AWS takes for that action."""
    patterns = []
    for statement in policy()["Statement"]:
        actions = statement["Action"]
        if action not in ([actions] if isinstance(actions, str) else actions):
            continue
        assert statement["Effect"] == "Allow"
        found = RESOURCE.fullmatch(statement["Resource"])
        assert found, statement["Resource"]
        assert found.group(1) == KINDS[action], (action, statement["Resource"])
        patterns.append(found.group(2).replace("${iot:Connection.Thing.ThingName}", THING))
    return patterns


def allowed(action: str, name: str) -> bool:
    # IoT policies: '*' matches any characters, '?' one; MQTT wildcards are plain text.
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in granted(action))


def test_the_iot_policy_grants_what_the_device_does_with_the_right_resources():
    assert allowed("iot:Connect", THING)
    for topic_filter in protocol.reply_subscriptions(THING):
        assert allowed("iot:Subscribe", topic_filter), topic_filter
    requests = [protocol.get_pending_topic(THING), protocol.describe_topic(THING, "job-1"),
                protocol.update_topic(THING, "job-1")]
    for topic in requests:
        assert allowed("iot:Publish", topic), topic
        for reply in (protocol.accepted(topic), protocol.rejected(topic)):
            assert allowed("iot:Receive", reply), reply
    for push in (protocol.notify_topic(THING), protocol.notify_next_topic(THING)):
        assert allowed("iot:Receive", push), push
    # Nothing of another thing's.
    assert not allowed("iot:Publish", protocol.update_topic("turbine-gw-02", "job-1"))
    assert not allowed("iot:Subscribe", "$aws/things/+/jobs/notify")


@pytest.mark.parametrize("name", ["docs/jobs.md", "README.md"])
def test_the_documented_placeholders_are_in_aws_form(name):
    text = (ROOT / name).read_text()
    # The examples, not the forms written out with <region>, <bucket>, <key> or "...".
    found = [m.group(0) for m in _PLACEHOLDER.finditer(text)
             if "<" not in m.group(0) and not m.group(0).endswith(":...}")]
    assert found
    for placeholder in found:
        placeholder_url(placeholder)  # raises unless AWS takes it
