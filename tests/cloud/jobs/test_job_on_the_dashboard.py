"""A model update in progress is on the dashboard: a real `edged run` held at a phase of
a real job (tests/support/run_edged.py) shows the job, its model and phase in
/api/state; once the job is done, no job is shown."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from edged.testing import eventually
from tests.support import EdgedProcess
from tests.support.jobs_peer import JobsService

from .conftest import THING, Fleet, finished

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = 'dashboard: {listen: "127.0.0.1:0"}\n'


def jobs_on(port: int) -> list[dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/state?limit=1",
                                timeout=10) as response:
        return json.loads(response.read())["jobs"]


async def test_the_job_in_progress_and_its_phase(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    config = fleet.config(extra=DASHBOARD)
    marker = fleet.state_dir / "jobs" / "paused-at-verifying"
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs:
        await jobs.queue_job(THING, "deploy-2", doc)
        with EdgedProcess(config, cwd=ROOT, pause_jobs_at="verifying") as held:
            port = (await held.wait_for("dashboard_listening", 30))["port"]
            await eventually(marker.exists, 60)
            [job] = jobs_on(port)
            assert (job["job_id"], job["phase"], job["version"]) == ("deploy-2", "verifying", 2)
            assert job["bytes"] > 0
            held.kill()
        marker.unlink()
        with EdgedProcess(config, cwd=ROOT) as daemon:
            port = (await daemon.wait_for("dashboard_listening", 30))["port"]
            execution = await finished(jobs, "deploy-2", 60)
            assert execution.status == "SUCCEEDED", execution.status_details
            await eventually(lambda: daemon.events("job_finished"), 30)
            assert jobs_on(port) == []
