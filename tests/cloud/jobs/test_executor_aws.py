"""The executor against a jobs service as strict as AWS IoT Core (issue 19): throttled and
failing requests, final refusals, \\p{C} in statusDetails, ended and deleted executions,
step timers and in-progress timeouts, odd reply fields, jobs that are not ours.

Each runs a daemon graph in-process against mosquitto, the jobs peer and bundles over
HTTP. Time is compressed where AWS's figures are minutes (``compress_time``: the device
and the peer agree on how long a minute lasts); no test waits a minute."""

from __future__ import annotations

from edged.base.retry import ceiling
from edged.testing import eventually
from tests.support.jobs_peer import JobsService, Presigner, status_details_problem

from .conftest import THING, Fleet, compress_time, document, finished
from .test_executor import daemon, serving


def updates(jobs: JobsService, job_id: str, status: str | None = None) -> list[dict]:
    return [r for topic, r in jobs.requests if topic.endswith(f"/{job_id}/update")
            and r is not None and (status is None or r.get("status") == status)]


def downloads(fleet: Fleet, name: str) -> int:
    return sum(1 for r in fleet.server.requests if r["path"] == f"/{name}")


async def test_a_throttled_final_report_is_sent_again_under_backoff_never_rerun(
        fleet: Fleet, monkeypatch):
    # The real policy (10 s doubling to 640 s, full jitter), recorded but not waited.
    delays = compress_time(monkeypatch, backoff_s=(10.0, 640.0), pause_s=0.01)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        jobs.refuse("RequestThrottled", times=2, operation="update", status="SUCCEEDED")
        jobs.refuse("InternalError", times=1, operation="update", status="SUCCEEDED")
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        assert serving(graph) == 2
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists())
        retried = graph.counters.total("jobs_requests_retried")
    assert [code for *_, code in jobs.refused] == ["RequestThrottled", "RequestThrottled",
                                                   "InternalError"]
    assert len(updates(jobs, "deploy-2", "SUCCEEDED")) == 4
    # Never run again: one download, one pass through the phases, nothing REJECTED.
    assert downloads(fleet, "v2") == 1
    phases = [u["statusDetails"]["phase"] for u in updates(jobs, "deploy-2", "IN_PROGRESS")]
    assert phases.count("downloading") == 1 and phases.count("activating") == 1
    assert not updates(jobs, "deploy-2", "REJECTED")
    assert retried == 3
    # Full jitter under ceilings of 10, 20 and 40 s (edged.base.retry).
    assert len(delays) == 3
    assert all(0 <= d <= ceiling(n, 10.0, 640.0) for n, d in enumerate(delays, 1))
    assert [ceiling(n, 10.0, 640.0) for n in (1, 2, 3, 7, 8)] == [10, 20, 40, 640, 640]


async def test_throttled_requests_of_every_kind_are_asked_again(fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        for operation in ("get", "start-next", "describe"):
            jobs.refuse("RequestThrottled", times=2, operation=operation)
        jobs.refuse("InternalError", times=2, operation="update", status="IN_PROGRESS")
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        assert serving(graph) == 2
    assert len(jobs.refused) >= 4  # the kinds this executor asks
    assert downloads(fleet, "v2") == 1


async def test_a_report_refused_for_good_is_not_rerun_and_is_left_to_time_out(
        fleet: Fleet, monkeypatch):
    compress_time(monkeypatch, minute_s=1.0)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port, minute_s=1.0) as jobs, \
            daemon(fleet.config(jobs="    step_timeout_minutes: 2\n")) as (graph, _):
        refusal = jobs.refuse("InvalidRequest", times=None, operation="update",
                              status="SUCCEEDED")
        await jobs.queue_job(THING, "deploy-2", doc)
        # Sent as decided, then once more with only what must be said; then left alone
        # until its step timer ends it: TIMED_OUT, never run a second time.
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "TIMED_OUT"
        refusal.times = 0
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists())
        assert serving(graph) == 2
        assert graph.counters.get("jobs_reports_refused", code="InvalidRequest") == 1
    sent = updates(jobs, "deploy-2", "SUCCEEDED")
    assert len(sent) == 2
    assert set(sent[1]["statusDetails"]) < set(sent[0]["statusDetails"])
    assert downloads(fleet, "v2") == 1 and not updates(jobs, "deploy-2", "REJECTED")


async def test_a_job_deleted_while_its_report_is_throttled_is_dropped_without_a_rerun(
        fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        refusal = jobs.refuse("RequestThrottled", times=None, operation="update",
                              status="SUCCEEDED")
        await jobs.queue_job(THING, "deploy-2", doc)
        await eventually(lambda: jobs.refused, 30)
        await jobs.delete(THING, "deploy-2")
        refusal.times = 0
        await eventually(lambda: graph.counters.get("jobs_reports_refused",
                                                    code="ResourceNotFound") == 1, 30)
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists())
        assert serving(graph) == 2
    assert downloads(fleet, "v2") == 1
    assert not updates(jobs, "deploy-2", "REJECTED") and not updates(jobs, "deploy-2",
                                                                      "FAILED")


async def test_invisible_characters_never_get_a_report_refused(fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    # A document of ours with a stray key: REJECTED malformed, and the error names the key,
    # zero-width space, bidi override and all.
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    doc["options"]["sneaky\u200bkey\u202e"] = True
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "odd", doc)
        execution = await finished(jobs, "odd")
        assert execution.status == "REJECTED", execution.status_details
        assert serving(graph) == 1
    details = execution.status_details
    assert details["reason"] == "malformed"
    assert "sneaky\ufffdkey\ufffd" in details["detail"]
    assert status_details_problem(details) is None
    assert not [code for *_, code in jobs.refused]
    assert len(updates(jobs, "odd")) <= 3


async def test_a_job_deleted_mid_download_stops_at_once_without_asking_again(
        fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    fleet.server.stall_after = 50_000  # the download hangs half-way
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", doc)
        await eventually(lambda: jobs.execution(THING, "deploy-2").status_details.get(
            "phase") == "downloading")
        described = len([t for t, _ in jobs.requests if t.endswith("/deploy-2/get")])
        await jobs.delete(THING, "deploy-2")
        # notify-next announces nothing pending; describing the job answers
        # ResourceNotFound: the job is gone, the work stops.
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists(), 45)
        assert serving(graph) == 1 and fleet.serving() == 1
        await eventually(lambda: graph.counters.total("jobs_gone") == 1)
    after = [t for t, _ in jobs.requests if t.endswith("/deploy-2/get")]
    assert len(after) - described <= 1  # asked once, not once a second
    assert not [r for r in updates(jobs, "deploy-2") if r["status"] != "IN_PROGRESS"]


async def test_a_shadow_trial_longer_than_the_step_timer_keeps_it_renewed(
        fleet: Fleet, monkeypatch):
    # A minute lasts 2 s: the step timer is 2 s, the trial (40 decisions of 4 turbines
    # every 0.5 s) some 5 s, with no phase starting meanwhile.
    compress_time(monkeypatch, minute_s=2.0)
    doc = fleet.publish("v2", fleet.bundle(2), 2, shadow_decisions=40)
    async with JobsService(fleet.broker.host, fleet.broker.port, minute_s=2.0) as jobs, \
            daemon(fleet.config(jobs="    step_timeout_minutes: 1\n")) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2", 60)
        assert execution.status == "SUCCEEDED", (execution.status, execution.status_details)
        assert serving(graph) == 2
    shadow = [u for u in updates(jobs, "deploy-2", "IN_PROGRESS")
              if u["statusDetails"]["phase"] == "shadow"]
    assert len(shadow) >= 3 and all(u["stepTimeoutInMinutes"] == 1 for u in shadow)


async def test_an_in_progress_timeout_stops_the_work_before_the_commit(
        fleet: Fleet, monkeypatch):
    compress_time(monkeypatch, minute_s=1.0)
    doc = fleet.publish("v2", fleet.bundle(2), 2, shadow_decisions=80)
    async with JobsService(fleet.broker.host, fleet.broker.port, minute_s=1.0) as jobs, \
            daemon(fleet.config(jobs="    step_timeout_minutes: 1\n")) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", doc, in_progress_timeout_minutes=3)
        execution = await finished(jobs, "deploy-2", 60)
        assert execution.status == "TIMED_OUT"
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists(), 30)
        assert serving(graph) == 1 and fleet.serving() == 1
    assert not [r for r in updates(jobs, "deploy-2") if r["status"] != "IN_PROGRESS"]


async def test_an_unexpected_field_value_does_not_drop_the_reply(fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        # A time as text and a field this device does not know, in every execution sent.
        jobs.execution_extras = {"queuedAt": "2024-05-01T12:00:00Z",
                                 "approximateSecondsBeforeTimedOut": 600}
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        assert serving(graph) == 2
        assert graph.counters.total("jobs_reply_fields_unread") >= 1
        assert graph.counters.get("jobs_replies_ignored", reason="malformed") == 0


async def test_a_job_that_is_not_ours_is_left_alone(fleet: Fleet, monkeypatch):
    compress_time(monkeypatch)
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        # Queued first, for other software on the same thing: not ours to start or answer.
        await jobs.queue_job(THING, "reboot-1", {"operation": "reboot", "delay_s": 5})
        await jobs.queue_job(THING, "not-json-object", "[1, 2]")
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        await jobs.queue_job(THING, "deploy-3", fleet.publish("v3", fleet.bundle(3), 3))
        assert (await finished(jobs, "deploy-3")).status == "SUCCEEDED"
        assert serving(graph) == 3
        counted = graph.counters.total("jobs_left_alone")
    for job_id in ("reboot-1", "not-json-object"):
        foreign = jobs.execution(THING, job_id)
        assert (foreign.status, foreign.version_number, foreign.status_details) == (
            "QUEUED", 1, {})
        assert not updates(jobs, job_id)
    assert counted == 2  # once per job, however often the list is read


async def test_a_v2_placeholder_in_aws_form_reaches_the_object_by_its_key(fleet: Fleet):
    data = fleet.bundle(2)
    # The object's key has a space and a '?': the placeholder holds it encoded.
    fleet.server.files["models/windturbine 2?.tar.gz"] = data
    presigner = Presigner(fleet.server.url("").rstrip("/"), expires_s=600)
    fleet.server.valid = presigner.valid
    placeholder = ("${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/"
                   "models/windturbine%202%3F.tar.gz}")
    async with JobsService(fleet.broker.host, fleet.broker.port,
                           presign=presigner) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", document(placeholder, data, 2))
        execution = await finished(jobs, "deploy-2")
    assert execution.status == "SUCCEEDED", execution.status_details
    assert serving(graph) == 2
    assert [r["status"] for r in fleet.server.requests] == [200]


def test_the_default_timing_is_aws_own():
    from edged.cloud.jobs.executor import TIMING

    assert TIMING.backoff_s == (10.0, 640.0) and TIMING.minute_s == 60.0
    # A step timer of 10 minutes is renewed every 200 s: a lost renewal leaves time.
    assert TIMING.renew_every_s(10) == 200.0
