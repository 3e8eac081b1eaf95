"""The IoT Jobs contract's pure parts: topics, request limits, clamping, reply parsing."""

import json

import pytest

from edged.cloud.jobs import protocol
from edged.cloud.jobs.document import document_of
from edged.cloud.jobs.protocol import JobDocumentError, JobsProtocolError

THING = "turbine-7"
BASE = "$aws/things/turbine-7/jobs"


def test_topics():
    assert protocol.start_next_topic(THING) == f"{BASE}/start-next"
    assert protocol.accepted(protocol.start_next_topic(THING)) == f"{BASE}/start-next/accepted"
    assert protocol.rejected(protocol.start_next_topic(THING)) == f"{BASE}/start-next/rejected"
    assert protocol.describe_topic(THING, "job-1") == f"{BASE}/job-1/get"
    assert protocol.describe_topic(THING, "$next") == f"{BASE}/$next/get"
    assert protocol.update_topic(THING, "job_1") == f"{BASE}/job_1/update"
    assert protocol.accepted(protocol.update_topic(THING, "j")) == f"{BASE}/j/update/accepted"
    assert protocol.notify_next_topic(THING) == f"{BASE}/notify-next"
    assert protocol.notify_topic(THING) == f"{BASE}/notify"
    assert protocol.get_pending_topic(THING) == f"{BASE}/get"


@pytest.mark.parametrize("thing", ["", "a/b", "a+", "#", "x" * 129])
def test_topics_refuse_bad_thing_names(thing):
    with pytest.raises(JobsProtocolError):
        protocol.start_next_topic(thing)


@pytest.mark.parametrize("job_id", ["", "a" * 65, "a/b", "a.b", "$next", "job 1", "é"])
def test_job_id_limits(job_id):
    with pytest.raises(JobsProtocolError, match="jobId"):
        protocol.update_topic(THING, job_id)


def test_job_id_of_64_characters_is_fine():
    assert protocol.check_job_id("a" * 64) == "a" * 64


@pytest.mark.parametrize(("topic", "expected"), [
    (f"{BASE}/start-next/accepted", protocol.Topic(THING, "start-next", None, "accepted")),
    (f"{BASE}/start-next", protocol.Topic(THING, "start-next")),
    (f"{BASE}/get/rejected", protocol.Topic(THING, "get", None, "rejected")),
    (f"{BASE}/job-1/get/accepted", protocol.Topic(THING, "describe", "job-1", "accepted")),
    (f"{BASE}/$next/get", protocol.Topic(THING, "describe", "$next")),
    (f"{BASE}/job-1/update/rejected", protocol.Topic(THING, "update", "job-1", "rejected")),
    (f"{BASE}/notify-next", protocol.Topic(THING, "notify-next")),
    (f"{BASE}/notify", protocol.Topic(THING, "notify")),
])
def test_parse_topic(topic, expected):
    assert protocol.parse_topic(topic, THING) == expected


@pytest.mark.parametrize("topic", [
    "things/turbine-7/jobs/start-next", f"{BASE}", f"{BASE}/whatever",
    f"{BASE}/$next/update", f"{BASE}/notify/accepted", f"{BASE}/a/b/update",
    "$aws/things/turbine-7/shadow/update",
])
def test_parse_topic_refuses_what_is_not_a_jobs_operation(topic):
    with pytest.raises(JobsProtocolError):
        protocol.parse_topic(topic, THING)


def test_replies_for_another_thing_are_refused():
    payload = json.dumps({"clientToken": "t", "execution": {"jobId": "j"}})
    with pytest.raises(JobsProtocolError, match="turbine-8"):
        protocol.parse_reply("$aws/things/turbine-8/jobs/start-next/accepted", payload, THING)
    with pytest.raises(JobsProtocolError):
        protocol.parse_reply(f"{BASE}/start-next", payload, THING)
    parsed, reply = protocol.parse_reply(f"{BASE}/start-next/accepted", payload, THING)
    assert parsed.operation == "start-next"
    assert reply.execution.job_id == "j"


def test_reply_subscriptions_cover_every_reply():
    subscriptions = protocol.reply_subscriptions(THING)
    assert f"{BASE}/notify-next" in subscriptions
    assert all(s.startswith(BASE + "/") for s in subscriptions)


def test_start_next_request():
    assert json.loads(protocol.start_next("tok")) == {"clientToken": "tok"}
    assert json.loads(protocol.start_next("tok", {"step": "download"}, 30)) == {
        "clientToken": "tok", "statusDetails": {"step": "download"},
        "stepTimeoutInMinutes": 30}


@pytest.mark.parametrize("minutes", [0, 7 * 24 * 60 + 1, 1.5, True])
def test_step_timeout_limits(minutes):
    with pytest.raises(JobsProtocolError, match="stepTimeoutInMinutes"):
        protocol.start_next("tok", step_timeout_minutes=minutes)


def test_describe_request():
    assert json.loads(protocol.describe("job-1", "tok")) == {
        "clientToken": "tok", "includeJobDocument": True}
    assert json.loads(protocol.describe("$next", "tok", False, 2)) == {
        "clientToken": "tok", "includeJobDocument": False, "executionNumber": 2}
    with pytest.raises(JobsProtocolError):
        protocol.describe("job/1", "tok")
    with pytest.raises(JobsProtocolError):
        protocol.describe("job-1", "tok", execution_number=0)


def test_update_request():
    payload = json.loads(protocol.update("job-1", "IN_PROGRESS", "tok", {"step": "verify"}, 3,
                                         step_timeout_minutes=10))
    assert payload == {"status": "IN_PROGRESS", "clientToken": "tok",
                       "statusDetails": {"step": "verify"}, "expectedVersion": 3,
                       "stepTimeoutInMinutes": 10, "includeJobExecutionState": True}
    payload = json.loads(protocol.update("job-1", "FAILED", "tok", {}, None,
                                         include_state=False))
    assert "expectedVersion" not in payload
    assert payload["includeJobExecutionState"] is False


@pytest.mark.parametrize("status", ["QUEUED", "TIMED_OUT", "CANCELED", "REMOVED", "done"])
def test_update_refuses_statuses_the_device_may_not_set(status):
    with pytest.raises(JobsProtocolError, match="may not set"):
        protocol.update("job-1", status, "tok", {}, 1)


@pytest.mark.parametrize("details", [
    {"": "x"}, {"a b": "x"}, {"k" * 129: "x"}, {"key": ""}, {"key": "x" * 1025},
    {"key": "line\nbreak"}, {"key": 7}, {"key": "\x00"},
])
def test_update_refuses_status_details_over_the_limits(details):
    with pytest.raises(JobsProtocolError, match="statusDetails"):
        protocol.update("job-1", "IN_PROGRESS", "tok", details, 1)


def test_status_details_at_the_limits_pass():
    details = {"k" * 128: "v" * 1024, "a:b_c-d": "é ok"}
    assert json.loads(protocol.update("j", "IN_PROGRESS", "t", details, 1))[
        "statusDetails"] == details


@pytest.mark.parametrize("token", ["", "x" * 65, "a\nb", 5])
def test_client_token_limits(token):
    with pytest.raises(JobsProtocolError, match="clientToken"):
        protocol.start_next(token)


def test_clamp_status_details():
    clamped = protocol.clamp_status_details({
        "step": "download", "bytes": 1024, "error": "x" * 2000, "bad key": "dropped",
        "": "dropped", "empty": "", "trace": "a\nb\tc", "none": None})
    assert clamped.details == {"step": "download", "bytes": "1024", "error": "x" * 1024,
                               "trace": "a b c"}
    assert (clamped.truncated, clamped.dropped, clamped.cleaned) == (1, 4, 1)
    assert clamped.changed == 6
    # Whatever clamping leaves always passes the request's own checks.
    protocol.update("job-1", "IN_PROGRESS", "tok", clamped.details, 1)
    assert protocol.clamp_status_details({"ok": "fine"}).changed == 0


def test_parse_accepted_execution():
    reply = protocol.parse_accepted(json.dumps({
        "clientToken": "tok", "timestamp": 1700000100,
        "execution": {"jobId": "job-1", "thingName": THING, "status": "IN_PROGRESS",
                      "statusDetails": {"step": "download"}, "queuedAt": 1700000000,
                      "startedAt": 1700000050, "lastUpdatedAt": 1700000060,
                      "versionNumber": 2, "executionNumber": 1,
                      "jobDocument": {"operation": "edged.deploy-model"}}}))
    execution = reply.execution
    assert reply.client_token == "tok"
    assert execution == protocol.JobExecution(
        job_id="job-1", thing_name=THING, status="IN_PROGRESS",
        status_details={"step": "download"}, queued_at=1700000000, started_at=1700000050,
        last_updated_at=1700000060, version_number=2, execution_number=1,
        job_document={"operation": "edged.deploy-model"})


def test_parse_accepted_tolerates_missing_optional_fields():
    assert protocol.parse_accepted(b'{"timestamp": 1}').execution is None
    reply = protocol.parse_accepted({"execution": {"jobId": "j"}})
    assert reply.execution == protocol.JobExecution(job_id="j")
    update = protocol.parse_accepted({"executionState": {"status": "SUCCEEDED",
                                                         "versionNumber": 4}})
    assert update.execution_state == protocol.ExecutionState("SUCCEEDED", {}, 4)


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", {"execution": []}, {"execution": {}},
    {"execution": {"jobId": 5}}, {"execution": {"jobId": "j", "versionNumber": "2"}},
    {"execution": {"jobId": "j", "versionNumber": True}},
    {"execution": {"jobId": "j", "status": "DONE"}},
    {"execution": {"jobId": "j", "statusDetails": {"a": 1}}},
    {"execution": {"jobId": "j", "jobDocument": "{}"}},
    {"clientToken": 7},
])
def test_parse_accepted_is_strict_on_types(payload):
    with pytest.raises(JobsProtocolError):
        protocol.parse_accepted(payload)


def test_parse_rejected():
    reply = protocol.parse_rejected(json.dumps({
        "code": "VersionMismatch", "message": "stale", "clientToken": "tok",
        "timestamp": 5, "executionState": {"status": "IN_PROGRESS",
                                           "statusDetails": {"step": "x"},
                                           "versionNumber": 3}}))
    assert reply == protocol.Rejected(
        code="VersionMismatch", message="stale", client_token="tok", timestamp=5,
        execution_state=protocol.ExecutionState("IN_PROGRESS", {"step": "x"}, 3))
    assert protocol.parse_rejected({"code": "Throttling"}) == protocol.Rejected("Throttling")
    with pytest.raises(JobsProtocolError, match="code"):
        protocol.parse_rejected({"message": "no code"})
    with pytest.raises(JobsProtocolError):
        protocol.parse_rejected({"code": 400})


def test_parse_notify_next():
    assert protocol.parse_notify_next(b'{"timestamp": 1}') is None
    assert protocol.parse_notify_next({"execution": {"jobId": "j"}}).job_id == "j"


REPLY = {"clientToken": "tok", "timestamp": 1,
         "execution": {"jobId": "job-1", "thingName": THING, "status": "IN_PROGRESS",
                       "versionNumber": 2, "jobDocument": {
                           "operation": "edged.deploy-model",
                           "bundle": {"url": "https://b.example.com/w.tar.gz",
                                      "sha256": "a" * 64, "size": 1},
                           "model": {"name": "windturbine", "version": 2}}}}


@pytest.mark.parametrize("key", ["clientToken", "execution", "jobId", "sha256", "version"])
def test_an_execution_whose_reply_repeats_a_key_is_refused_by_its_id(key):
    text = json.dumps(REPLY)
    at = text.index(f'"{key}":')
    # A decoy first: plain json.loads would keep the second, true-looking entry.
    doubled = text[:at] + f'"{key}": null, ' + text[at:]
    for parse in (protocol.parse_accepted, protocol.parse_notify_next):
        reply = parse(doubled)
        execution = reply if parse is protocol.parse_notify_next else reply.execution
        assert execution.job_id == "job-1"
        assert execution.document_error == f"key {key!r} appears twice in one object"
        with pytest.raises(JobDocumentError, match="appears twice"):
            document_of(execution)


def test_a_reply_without_an_execution_that_repeats_a_key_is_refused():
    for payload in (b'{"clientToken": "a", "clientToken": "b"}',
                    b'{"code": "Throttling", "code": "VersionMismatch"}'):
        for parse in (protocol.parse_accepted, protocol.parse_rejected,
                      protocol.parse_notify_next):
            with pytest.raises(JobsProtocolError, match="appears twice"):
                parse(payload)
