"""The data budget in a running daemon graph, over mosquitto through the real cloud link:
heartbeats thin out past their ceiling while job status still goes out, the usage they
report is what was published, and it survives a restart and ends with the UTC day."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle.keys import public_pem
from tests.support import Mosquitto
from tests.support.jobs_peer import JobsService

from .conftest import THING, Recorder, daemon, eventually, write_config

HEALTH = f"edged/{THING}/health"
SHADOW = f"$aws/things/{THING}/shadow/name/edged-health/update"


def trusted_keys(tmp: Path) -> Path:
    directory = tmp / "trusted"
    directory.mkdir()
    (directory / "release.pub.pem").write_bytes(
        public_pem(Ed25519PrivateKey.generate().public_key()))
    return directory


async def test_heartbeats_thin_out_past_their_ceiling_while_job_status_goes_out(
        tmp_path: Path):
    # 20,000 bytes a day, heartbeats until 10,000: a few heartbeats of some 2 KB each.
    cloud = (f"  jobs: {{trust: {{keys_dir: {trusted_keys(tmp_path)}}}, "
             "request_timeout_s: 5}\n"
             "  health: {interval_s: 0.1}\n"
             "  data_budget: {daily_mb: 0.02, heartbeat_share: 0.5, capture_share: 0.5}\n")
    with Mosquitto(tmp_path) as broker:
        async with JobsService(broker.host, broker.port) as jobs, \
                Recorder(broker.host, broker.port, [HEALTH]) as recorder, \
                daemon(write_config(tmp_path, broker.port, cloud)) as graph:
            counters, budget = graph.counters, graph.budget
            await eventually(lambda: counters.get("health_heartbeats",
                                                  result="over_budget") >= 3)
            sent = counters.get("health_heartbeats", result="sent")
            assert sent >= 2 and budget.usage()["deferred"]["heartbeat"] >= 3

            # Critical traffic is never held back: a job is answered (REJECTED, an
            # edged job whose document is malformed), over the heartbeats' ceiling.
            await jobs.queue_job(THING, "bad-1", {"operation": "edged.deploy-model"})
            await eventually(lambda: jobs.execution(THING, "bad-1").status == "REJECTED")
            assert budget.usage()["used_bytes"]["critical"] > 0
            assert counters.get("health_heartbeats", result="sent") == sent

            # An hour after the last heartbeat, one more goes out, then none again.
            budget.last_heartbeat_at -= 3600
            await eventually(lambda: counters.get("health_heartbeats", result="sent")
                             == sent + 1)
            refused = counters.get("health_heartbeats", result="over_budget")
            await eventually(lambda: counters.get("health_heartbeats",
                                                  result="over_budget") >= refused + 3)
            assert counters.get("health_heartbeats", result="sent") == sent + 1
            await eventually(lambda: len(recorder.on(HEALTH)) == sent + 1)
    last = json.loads(recorder.on(HEALTH)[-1])["budget"]
    assert last["budget_bytes"] == 20_000
    assert last["ceilings_bytes"] == {"heartbeat": 10_000, "capture": 10_000}
    assert last["deferred"]["heartbeat"] >= 3 and last["used_bytes"]["critical"] > 0


async def test_the_usage_heartbeats_report_is_the_bytes_they_published(tmp_path: Path):
    cloud = "  health: {interval_s: 0.1}\n  data_budget: {daily_mb: 10}\n"
    with Mosquitto(tmp_path) as broker:
        async with Recorder(broker.host, broker.port, [HEALTH, SHADOW]) as recorder, \
                daemon(write_config(tmp_path, broker.port, cloud)) as graph:
            await eventually(lambda: len(recorder.on(HEALTH)) >= 4)
        await eventually(lambda: recorder.bytes_published()
                         == graph.budget.usage()["used_bytes"]["heartbeat"])
    # Each heartbeat reports what went out before it (its own bytes are charged after).
    published = 0
    beats = 0
    for topic, payload in recorder.messages:
        body = json.loads(payload)
        if topic == HEALTH:
            beats += 1
            usage = body["budget"]
            assert usage["used_bytes"] == {"critical": 0, "heartbeat": published,
                                           "capture": 0, "total": published}
            assert usage["day"] == time.strftime("%Y-%m-%d", time.gmtime(body["time"]))
            assert body["counters"].get("budget_bytes{priority=heartbeat}", 0) == published
        else:  # the shadow summary of the same report
            assert body["state"]["reported"]["budget"]["used_bytes"] == usage["used_bytes"]
        published += len(payload) + len(topic) + 2 + 2 + 1 + (2 if len(payload) + len(
            topic) + 4 >= 128 else 1)
    assert beats >= 4
    assert published == recorder.bytes_published()


async def test_usage_survives_a_restart_and_ends_with_the_utc_day(tmp_path: Path):
    cloud = "  health: {interval_s: 0.1, shadow: null}\n  data_budget: {daily_mb: 10}\n"
    config = None
    with Mosquitto(tmp_path) as broker:
        async with Recorder(broker.host, broker.port, [HEALTH]) as recorder:
            config = write_config(tmp_path, broker.port, cloud)
            async with daemon(config) as first:
                await eventually(lambda: len(recorder.on(HEALTH)) >= 2)
            used = first.budget.usage()["used_bytes"]
            saved = json.loads((tmp_path / "state" / "budget" / "usage.json").read_text())
            assert saved["used"]["heartbeat"] == used["heartbeat"] > 0

            async with daemon(config) as second:
                await eventually(lambda: any(json.loads(b)["starts"] == 2
                                             for b in recorder.on(HEALTH)))
                beat = next(json.loads(b) for b in recorder.on(HEALTH)
                            if json.loads(b)["starts"] == 2)
                # The restarted daemon carries on from the bytes the first one spent.
                assert beat["budget"]["used_bytes"]["heartbeat"] == used["heartbeat"]

                # Midnight UTC: the next heartbeat reports a new day with nothing used.
                budget = second.budget
                tomorrow = time.time() + budget.seconds_until_reset() + 1
                budget.clock = lambda: tomorrow
                day = time.strftime("%Y-%m-%d", time.gmtime(tomorrow))
                await eventually(lambda: any(json.loads(b)["budget"]["day"] == day
                                             for b in recorder.on(HEALTH)))
    first_of_day = next(json.loads(b)["budget"] for b in recorder.on(HEALTH)
                        if json.loads(b)["budget"]["day"] == day)
    assert first_of_day["used_bytes"]["total"] == 0
    assert first_of_day["reset_in_s"] == 86400 - 1
