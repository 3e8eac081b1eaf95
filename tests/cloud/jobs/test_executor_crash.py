"""kill -9 of the daemon at every phase of a model update: on restart it serves the old
model or the new one (never none) and finishes the job correctly.

The daemon runs as a real process (``edged run``); at a phase, it runs through
tests/support/run_edged.py, whose executor hook stops right after the phase is saved in
the journal, where the test kills it. The jobs service peer and the bundle server outlive
the daemon, as AWS would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.cloud.jobs.journal import PHASES
from edged.testing import eventually
from tests.support import EdgedProcess
from tests.support.jobs_peer import JobsService

from .conftest import THING, Fleet, finished

ROOT = Path(__file__).resolve().parents[3]


def daemon(config: Path, pause_jobs_at: str | None = None) -> EdgedProcess:
    return EdgedProcess(config, cwd=ROOT, pause_jobs_at=pause_jobs_at)


@pytest.mark.parametrize("phase", PHASES)
async def test_killed_at_each_phase_serves_a_model_and_finishes_the_job(fleet: Fleet, phase):
    shadow = 8 if phase == "shadow" else 0
    doc = fleet.publish("v2", fleet.bundle(2), 2, shadow_decisions=shadow)
    config = fleet.config()
    marker = fleet.state_dir / "jobs" / f"paused-at-{phase}"
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs:
        await jobs.queue_job(THING, "deploy-2", doc)
        with daemon(config, pause_jobs_at=phase) as first:
            await eventually(marker.exists, 60)
            first.kill()
        # The commit to the store is the last step of "activating": killed before the
        # report, the new model is what a restart serves; killed earlier, the old one.
        served = fleet.serving()
        assert served == (2 if phase == "reporting" else 1)
        journal = json.loads((fleet.state_dir / "jobs" / "job.json").read_text())
        assert journal["phase"] == phase
        marker.unlink()
        with daemon(config) as second:
            execution = await finished(jobs, "deploy-2", 60)
            assert execution.status == "SUCCEEDED", execution.status_details
            await eventually(lambda: second.events("graph_started"), 30)
            assert second.events("model_loaded")[0]["version"] == served
            await eventually(lambda: second.events("job_finished"), 30)
        assert fleet.serving() == 2
    assert execution.status_details["version"] == "2"
    assert int(execution.status_details.get("resumed", "0")) >= 1 or phase == "reporting"
    assert not (fleet.state_dir / "jobs" / "job.json").exists()
    assert not (fleet.state_dir / "jobs" / "work").exists()


async def test_killed_mid_download_resumes_where_it_stopped(fleet: Fleet):
    data = fleet.bundle(2)
    doc = fleet.publish("v2", data, 2)
    fleet.server.stall_after = len(data) // 2  # the first download hangs half-way
    part = fleet.state_dir / "jobs" / "work" / "deploy-2" / "bundle.tar.gz.part"
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs:
        await jobs.queue_job(THING, "deploy-2", doc)
        with daemon(fleet.config()) as first:
            await eventually(lambda: part.exists() and part.stat().st_size == len(data) // 2,
                             60)
            first.kill()
        on_disk = part.stat().st_size
        assert 0 < on_disk < len(data) and fleet.serving() == 1
        fleet.server.stall_after = None
        with daemon(fleet.config()):
            execution = await finished(jobs, "deploy-2", 60)
    assert execution.status == "SUCCEEDED", execution.status_details
    resumed = [r for r in fleet.server.requests if r.get("range")]
    assert resumed and resumed[-1]["range"].startswith("bytes=")
    assert int(resumed[-1]["range"].removeprefix("bytes=").split("-")[0]) > 0
    assert fleet.serving() == 2


async def test_killed_while_its_report_is_throttled_reports_the_outcome_never_reruns(
        fleet: Fleet):
    """AWS answers the final report RequestThrottled; the daemon is killed (SIGKILL)
    before a retry is accepted. The outcome waits in the journal, and the next daemon
    reports it before anything else: nothing is downloaded, verified or decided again
    (a rerun would find the model already installed and report REJECTED not_newer)."""
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    config = fleet.config()
    journal = fleet.state_dir / "jobs" / "job.json"
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs:
        throttled = jobs.refuse("RequestThrottled", times=None, operation="update",
                                status="SUCCEEDED")
        await jobs.queue_job(THING, "deploy-2", doc)
        with daemon(config) as first:
            # Killed once it has decided what to do about the refusal (wait and ask
            # again, or give the report up), in the backoff's pause.
            await eventually(lambda: first.events("jobs_request_retry")
                             or first.events("job_report_refused"), 60)
            first.kill()
        assert jobs.refused and fleet.serving() == 2
        kept = json.loads(journal.read_text())
        assert (kept["phase"], kept["outcome"]["status"]) == ("reporting", "SUCCEEDED")
        assert jobs.execution(THING, "deploy-2").status == "IN_PROGRESS"
        throttled.times = 0
        downloads, asked = len(fleet.server.requests), len(jobs.requests)
        with daemon(config) as second:
            execution = await finished(jobs, "deploy-2", 60)
            await eventually(lambda: second.events("job_finished"), 30)
            assert not second.events("job_started") and not second.events("job_resumed")
    assert execution.status == "SUCCEEDED", execution.status_details
    assert execution.status_details == kept["outcome"]["details"]
    after = [(topic, request) for topic, request in jobs.requests[asked:]
             if topic.endswith("/deploy-2/update")]
    # The first thing the second daemon said of the job was its outcome, once.
    assert [request["status"] for _, request in after] == ["SUCCEEDED"]
    assert len(fleet.server.requests) == downloads
    assert fleet.serving() == 2 and not journal.exists()
