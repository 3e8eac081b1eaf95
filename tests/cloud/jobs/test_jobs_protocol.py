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
    # Every Unicode category C, not only controls: format (zero-width space, BOM, soft
    # hyphen, a bidi override), surrogate, private use, unassigned.
    {"key": "a\u200bb"}, {"key": "\ufeff"}, {"key": "soft\u00adhyphen"},
    {"key": "\u202e"}, {"key": "\ud800"}, {"key": "\ue000"}, {"key": "\U000f0000"},
    {"key": "\u0378"},
    # 1,024 characters, 1,025 UTF-16 code units: AWS counts the latter.
    {"key": "x" * 1023 + "\U0001f600"},
])
def test_update_refuses_status_details_over_the_limits(details):
    with pytest.raises(JobsProtocolError, match="statusDetails"):
        protocol.update("job-1", "IN_PROGRESS", "tok", details, 1)


def test_status_details_at_the_limits_pass():
    details = {"k" * 128: "v" * 1024, "a:b_c-d": "é ok", "emoji": "\U0001f600" * 512,
               "spaces": "a\u00a0b\u2003c"}
    assert json.loads(protocol.update("j", "IN_PROGRESS", "t", details, 1))[
        "statusDetails"] == details


@pytest.mark.parametrize("token", ["", "x" * 65, "a\nb", 5, "a b", "é"])
def test_client_token_limits(token):
    with pytest.raises(JobsProtocolError, match="clientToken"):
        protocol.start_next(token)


def test_clamp_status_details():
    clamped = protocol.clamp_status_details({
        "step": "download", "bytes": 1024, "error": "x" * 2000, "bad key": "dropped",
        "": "dropped", "empty": "", "trace": "a\nb\tc", "none": None})
    assert clamped.details == {"step": "download", "bytes": "1024", "error": "x" * 1024,
                               "trace": "a b c", "empty": protocol.EMPTY_VALUE}
    assert (clamped.truncated, clamped.dropped, clamped.cleaned) == (1, 3, 2)
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


def test_clamp_replaces_every_character_of_category_c():
    clamped = protocol.clamp_status_details({
        "zwsp": "wind\u200bturbine", "bom": "\ufeffv2", "shy": "soft\u00adhyphen",
        "lone": "a\ud800b", "private": "\ue000x", "unassigned": "\u0378",
        "bidi": "\u202eevil", "controls": "a\r\nb\x85c", "fine": "é \u00a0ok"})
    assert clamped.details == {
        "zwsp": "wind\ufffdturbine", "bom": "\ufffdv2", "shy": "soft\ufffdhyphen",
        "lone": "a\ufffdb", "private": "\ufffdx", "unassigned": "\ufffd",
        "bidi": "\ufffdevil", "controls": "a  b c", "fine": "é \u00a0ok"}
    assert clamped.cleaned == 8
    protocol.update("job-1", "IN_PROGRESS", "tok", clamped.details, 1)


def test_clamp_cuts_at_1024_utf16_code_units_never_inside_a_character():
    clamped = protocol.clamp_status_details({"e": "x" + "\U0001f600" * 600})
    value = clamped.details["e"]
    assert value == "x" + "\U0001f600" * 511  # 1 + 1,022 code units; one more is 1,025
    assert protocol.utf16_length(value) == 1023 and clamped.truncated == 1


@pytest.mark.parametrize("payload", [
    b"not json", b"[]", {"execution": []}, {"execution": {}},
    {"execution": {"jobId": 5}}, {"execution": {"jobId": "a/b"}},
])
def test_parse_accepted_refuses_a_reply_without_a_usable_execution(payload):
    with pytest.raises(JobsProtocolError):
        protocol.parse_accepted(payload)


@pytest.mark.parametrize(("execution", "unread"), [
    ({"versionNumber": "2"}, ["execution.versionNumber"]),
    ({"versionNumber": True}, ["execution.versionNumber"]),
    ({"queuedAt": 1.7e9}, ["execution.queuedAt"]),
    ({"statusDetails": {"a": 1, "b": "kept"}}, ["execution.statusDetails"]),
    ({"jobDocument": "{}"}, ["execution.jobDocument"]),
    ({"thingName": ["t"]}, ["execution.thingName"]),
])
def test_one_odd_field_value_leaves_the_rest_of_the_reply_read(execution, unread):
    reply = protocol.parse_accepted({"clientToken": "tok", "execution": {
        "jobId": "j", "status": "IN_PROGRESS", "executionNumber": 3, **execution}})
    assert reply.client_token == "tok" and reply.unread == tuple(unread)
    found = reply.execution
    assert (found.job_id, found.status, found.execution_number) == ("j", "IN_PROGRESS", 3)
    assert found.unread == tuple(unread)
    field = unread[0].split(".")[1]
    assert found.extra[field] == execution[field]  # kept as it came
    if field == "statusDetails":
        assert found.status_details == {"b": "kept"}


def test_a_status_this_contract_does_not_list_is_kept_and_not_terminal():
    reply = protocol.parse_accepted({"execution": {"jobId": "j", "status": "PAUSED",
                                                   "approximateSecondsBeforeTimedOut": 60}})
    assert reply.execution.status == "PAUSED" and not reply.unread
    assert reply.execution.status not in protocol.TERMINAL_STATUSES
    assert reply.execution.extra == {"approximateSecondsBeforeTimedOut": 60}
    odd = protocol.parse_accepted({"clientToken": 7, "timestamp": "now",
                                   "executionState": []})
    assert odd.client_token is None and odd.execution_state is None
    assert sorted(odd.unread) == ["reply.clientToken", "reply.executionState",
                                  "reply.timestamp"]


def test_parse_pending_lists_and_notify():
    reply = protocol.parse_accepted({
        "clientToken": "t", "inProgressJobs": [{"jobId": "a", "versionNumber": 3}],
        "queuedJobs": [{"jobId": "b"}, {"jobId": "bad/id"}, "junk", {"jobId": "c"}]})
    assert [e.job_id for e in reply.in_progress] == ["a"]
    assert reply.in_progress[0].version_number == 3
    assert [e.job_id for e in reply.queued] == ["b", "c"]
    assert reply.unread == ("queuedJobs[1]", "queuedJobs[2]")
    assert json.loads(protocol.get_pending("tok")) == {"clientToken": "tok"}
    assert protocol.parse_notify(json.dumps({"timestamp": 1, "jobs": {
        "IN_PROGRESS": [{"jobId": "a"}], "QUEUED": [{"jobId": "b"}, {"jobId": 5}, 7]}})) \
        == {"a", "b"}
    assert protocol.parse_notify(b'{"timestamp": 1}') == frozenset()


def test_parse_rejected():
    reply = protocol.parse_rejected(json.dumps({
        "code": "VersionMismatch", "message": "stale", "clientToken": "tok",
        "timestamp": 5, "executionState": {"status": "IN_PROGRESS",
                                           "statusDetails": {"step": "x"},
                                           "versionNumber": 3}}))
    assert reply == protocol.Rejected(
        code="VersionMismatch", message="stale", client_token="tok", timestamp=5,
        execution_state=protocol.ExecutionState("IN_PROGRESS", {"step": "x"}, 3))
    assert protocol.parse_rejected({"code": "RequestThrottled"}) == \
        protocol.Rejected("RequestThrottled")
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
                    b'{"code": "RequestThrottled", "code": "VersionMismatch"}'):
        for parse in (protocol.parse_accepted, protocol.parse_rejected,
                      protocol.parse_notify_next):
            with pytest.raises(JobsProtocolError, match="appears twice"):
                parse(payload)
