"""The jobs executor in a running daemon graph, against mosquitto, the jobs service peer
and bundles over HTTP: each job ends in the right status, and the device always serves
a working model."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.app.assembly import build_graph
from edged.base.errors import ConfigError
from edged.config import load_config
from edged.model.bundle import key_id
from edged.plugin.events import Round
from edged.plugin.manager import make_plugin_manager
from edged.runtime.graph import Graph
from edged.testing import eventually, running_graph
from tests.support import Mosquitto, S3Server, make_pki
from tests.support.jobs_peer import JobsService, Presigner

from .conftest import THING, Fleet, document, finished, trust_key

_, REGISTRY = make_plugin_manager()


class Recorder:
    """A pipeline subscriber: the model version of every decision, per turbine."""

    def __init__(self) -> None:
        self.decisions: list[tuple[str, int, float]] = []

    def on_round(self, round: Round) -> None:
        self.decisions += [(d.turbine, d.model.version, d.time) for d in round.decisions]

    def on_event(self, event) -> None:
        pass

    def versions(self) -> set[int]:
        return {version for _, version, _ in self.decisions}


@contextlib.asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[tuple[Graph, Recorder]]:
    """A running daemon graph, and a recorder of its decisions from its start on."""
    async with running_graph(config, REGISTRY) as graph:
        recorder = Recorder()
        graph.pipelines["turbines"].subscribers.append(recorder)
        yield graph, recorder


def serving(graph: Graph) -> int:
    return graph.pipelines["turbines"].backend.model.version


async def run_job(fleet: Fleet, doc: dict, job_id: str = "deploy-2", **service):
    """Run one job on a fresh daemon (with the last config written, or the default)."""
    config = fleet.tmp / "edged.yaml"
    async with JobsService(fleet.broker.host, fleet.broker.port, **service) as jobs, \
            daemon(config if config.exists() else fleet.config()) as (graph, recorder):
        await jobs.queue_job(THING, job_id, doc)
        execution = await finished(jobs, job_id)
        return execution, graph, recorder, jobs


async def test_a_signed_newer_model_is_installed_and_served_without_missing_a_decision(
        fleet: Fleet):
    doc = fleet.publish("v2.tar.gz", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, recorder):
        await eventually(lambda: len(recorder.decisions) >= 8)
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        assert serving(graph) == 2
        swapped_at = max(t for _, v, t in recorder.decisions if v == 1)
        await eventually(lambda: any(t > swapped_at + 1.0 for *_, t in recorder.decisions))
    details = execution.status_details
    assert details["phase"] == "done" and details["version"] == "2"
    assert details["previousVersion"] == "1" and details["activated"] == "true"
    assert {"t:downloading", "t:verifying", "t:staging", "t:activating"} <= details.keys()
    assert recorder.versions() == {1, 2}
    # Every turbine is decided every interval across the swap (0.5 s; allow scheduling).
    for turbine in {t for t, _, _ in recorder.decisions}:
        times = np.array([t for name, _, t in recorder.decisions if name == turbine])
        assert np.diff(times).max() < 0.9, turbine
    store = fleet.store()
    assert store.current().version == 2 and store.previous().version == 1
    # Taken from the queue by an update to IN_PROGRESS, then progress phase by phase,
    # each with a step timer.
    updates = [request for topic, request in jobs.requests
               if topic.endswith("/deploy-2/update")]
    phases = [u["statusDetails"]["phase"] for u in updates if u["status"] == "IN_PROGRESS"]
    assert phases[:2] == ["received", "downloading"] and "activating" in phases
    assert updates[0]["expectedVersion"] == 1
    assert all(u.get("stepTimeoutInMinutes") == 10 for u in updates
               if u["status"] == "IN_PROGRESS")
    assert not (fleet.state_dir / "jobs" / "job.json").exists()


def _bad_bundles(fleet: Fleet) -> dict[str, tuple[dict, str, str]]:
    """name -> (job document, expected status, expected reason)."""
    good = fleet.bundle(2)
    stranger = Ed25519PrivateKey.generate()

    def repacked(mutate) -> bytes:
        stage = fleet.tmp / "stage"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        with tarfile.open(fileobj=io.BytesIO(good), mode="r:gz") as tar:
            tar.extractall(stage, filter="data")
        extra = mutate(stage) or {}
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for path in sorted(stage.iterdir()):
                tar.add(path, arcname=path.name)
            for name, data in extra.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return out.getvalue()

    def unsign(stage: Path) -> None:
        (stage / "manifest.sig").unlink()

    def retitle(stage: Path) -> None:
        manifest = json.loads((stage / "manifest.json").read_text())
        manifest["preprocessing"]["thresholds"] = [1.0] * 13
        (stage / "manifest.json").write_text(json.dumps(manifest))

    def escape(stage: Path) -> dict:
        return {"../escaped.txt": b"out of the slot"}

    def wrong_shape(manifest: dict, directory: Path) -> None:
        manifest["inputs"][0]["shape"] = [None, 99, 10, 10]

    def wrong_golden(manifest: dict, directory: Path) -> None:
        with np.load(directory / manifest["golden"]) as golden:
            inputs, outputs = golden["inputs"], golden["outputs"]
        np.savez(directory / manifest["golden"], inputs=inputs, outputs=outputs + 1.0)

    def publish(name: str, data: bytes, version: int = 2, **kw) -> dict:
        return fleet.publish(name, data, version, **kw)

    truncated = good[: len(good) // 2]
    return {
        "wrong hash": ({**publish("a", good), "bundle": {
            **publish("a", good)["bundle"], "sha256": "0" * 64}}, "REJECTED", "hash_mismatch"),
        "unknown key": (publish("b", fleet.bundle(2, key=stranger)), "REJECTED",
                        "unknown_key"),
        "bad signature": (publish("c", repacked(retitle)), "REJECTED", "bad_signature"),
        "unsigned": (publish("d", repacked(unsign)), "REJECTED", "unsigned"),
        "older version": (publish("e", fleet.bundle(1), 1), "REJECTED", "not_newer"),
        "truncated archive": (publish("f", truncated), "REJECTED", "truncated"),
        "entry escaping the slot": (publish("g", repacked(escape)), "REJECTED",
                                    "unsafe_entry"),
        "wrong input shape": (publish("h", fleet.bundle(2, tweak=wrong_shape)), "REJECTED",
                              "incompatible"),
        "golden pairs fail": (publish("i", fleet.bundle(2, tweak=wrong_golden)), "REJECTED",
                              "golden_failed"),
        "other model named": ({**publish("j", good), "model": {"name": "windturbine",
                                                               "version": 3}},
                              "REJECTED", "incompatible"),
        "malformed document": ({"operation": "edged.deploy-model", "bundle": {"url": 7}},
                               "REJECTED", "malformed"),
    }


async def test_every_bad_bundle_ends_in_its_status_with_the_old_model_serving(fleet: Fleet):
    cases = _bad_bundles(fleet)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, recorder):
        for index, (name, (doc, status, reason)) in enumerate(cases.items()):
            job_id = f"bad-{index}"
            await jobs.queue_job(THING, job_id, doc)
            execution = await finished(jobs, job_id)
            assert (execution.status, execution.status_details.get("reason")) == \
                (status, reason), (name, execution.status_details)
            assert serving(graph) == 1, name
            assert fleet.serving() == 1, name
        count = len(recorder.decisions)
        await eventually(lambda: len(recorder.decisions) > count)  # still deciding
    assert not (fleet.tmp / "state" / "models" / "windturbine" / "escaped.txt").exists()
    assert not list((fleet.state_dir / "jobs").glob("work/*"))


async def test_oversize_and_cut_downloads(fleet: Fleet):
    data = fleet.bundle(2)
    oversize = fleet.publish("big", data, 2)
    oversize["bundle"]["size"] = 300 << 20  # over the default 256 MiB cap
    cut = fleet.publish("cut", data, 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "big", oversize)
        execution = await finished(jobs, "big")
        assert (execution.status, execution.status_details["reason"]) == \
            ("REJECTED", "too_large")
        # A link that always breaks mid-way is transient trouble: FAILED, retryable.
        fleet.server.cut_after, fleet.server.cut_times = 1000, 100
        await jobs.queue_job(THING, "cut", cut)
        execution = await finished(jobs, "cut", seconds=60)
        assert execution.status == "FAILED", execution.status_details
        assert execution.status_details["reason"] == "network"
        assert serving(graph) == 1 and fleet.serving() == 1


async def test_an_expired_url_is_refreshed_by_describing_the_execution(fleet: Fleet):
    data = fleet.bundle(2)
    fleet.server.files["models/windturbine-2.tar.gz"] = data
    presigner = Presigner(fleet.server.url("").rstrip("/"), expires_s=60)
    fleet.server.valid = presigner.valid

    service: list[JobsService] = []

    def presign(url: str) -> str:
        signed = presigner(url)
        described = sum(topic.endswith("/deploy-2/get") for topic, _ in service[0].requests)
        if described < 2:
            presigner.revoke(signed)  # the first URL has expired by the time it is used
        return signed

    placeholder = ("${aws:iot:s3-presigned-url:"
                   "https://s3.amazonaws.com/models/windturbine-2.tar.gz}")
    async with JobsService(fleet.broker.host, fleet.broker.port, presign=presign) as jobs, \
            daemon(fleet.config()) as (graph, _):
        service.append(jobs)
        await jobs.queue_job(THING, "deploy-2", document(placeholder, data, 2))
        execution = await finished(jobs, "deploy-2")
    assert execution.status == "SUCCEEDED", execution.status_details
    assert serving(graph) == 2
    assert sum(topic.endswith("/deploy-2/get") for topic, _ in jobs.requests) >= 2
    assert fleet.server.requests[0]["status"] == 403
    assert len(presigner.issued) >= 2


async def test_a_job_queued_while_the_device_was_offline_runs_when_it_connects(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs:
        await jobs.queue_job(THING, "deploy-2", doc)  # before the daemon exists
        async with daemon(fleet.config()) as (graph, _):
            execution = await finished(jobs, "deploy-2")
            assert execution.status == "SUCCEEDED"
            assert serving(graph) == 2


async def test_staged_only_when_activate_is_false(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2, activate=False)
    execution, graph, _, _ = await run_job(fleet, doc)
    assert execution.status == "SUCCEEDED"
    assert execution.status_details["activated"] == "false"
    assert serving(graph) == 1 and fleet.serving() == 1
    assert [s.version for s in fleet.store().slots()] == [1, 2]


async def test_jobs_run_in_turn_and_a_second_update_goes_further(fleet: Fleet):
    v2 = fleet.publish("v2", fleet.bundle(2), 2)
    v3 = fleet.publish("v3", fleet.bundle(3), 3)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", v2)
        await jobs.queue_job(THING, "deploy-3", v3)
        assert (await finished(jobs, "deploy-2")).status == "SUCCEEDED"
        assert (await finished(jobs, "deploy-3")).status == "SUCCEEDED"
        assert serving(graph) == 3
    store = fleet.store()
    assert (store.current().version, store.previous().version) == (3, 2)


async def test_a_job_cancelled_mid_download_leaves_the_model_alone(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    fleet.server.stall_after = 50_000  # the download hangs half-way
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _):
        await jobs.queue_job(THING, "deploy-2", doc)
        await eventually(lambda: jobs.execution(THING, "deploy-2").status_details.get(
            "phase") == "downloading")
        await jobs.cancel(THING, "deploy-2")
        # Noticed at once (notify-next announces no job, a describe shows CANCELED); the
        # bound is wide for a loaded machine.
        await eventually(lambda: not (fleet.state_dir / "jobs" / "job.json").exists(), 45)
        assert jobs.execution(THING, "deploy-2").status == "CANCELED"
        # Stopped as cancelled, not left to fail its download and report that.
        assert not [r for topic, r in jobs.requests if topic.endswith("/deploy-2/update")
                    and r and r.get("status") != "IN_PROGRESS"]
        assert serving(graph) == 1 and fleet.serving() == 1


async def test_shadow_gate_promotes_a_model_that_behaves_like_the_live_one(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2, shadow_decisions=20)
    execution, graph, _, _ = await run_job(fleet, doc)
    assert execution.status == "SUCCEEDED", execution.status_details
    assert execution.status_details["shadow:decisions"] == "20"
    assert serving(graph) == 2


async def test_shadow_gate_stops_a_model_that_alarms_far_more_often(fleet: Fleet):
    def touchy(manifest: dict, directory: Path) -> None:
        pre = manifest["preprocessing"]
        pre["thresholds"] = [t * 0.001 for t in pre["thresholds"]]

    doc = fleet.publish("v2", fleet.bundle(2, tweak=touchy), 2, shadow_decisions=20)
    execution, graph, _, _ = await run_job(fleet, doc)
    assert execution.status == "FAILED", execution.status_details
    details = execution.status_details
    assert details["reason"] == "shadow_failed"
    assert float(details["shadow:candidateAnomalyRate"]) > 0.5
    assert serving(graph) == 1 and fleet.serving() == 1


async def test_trusting_and_revoking_keys_is_configuration(fleet: Fleet):
    newcomer = Ed25519PrivateKey.generate()
    doc = fleet.publish("v2", fleet.bundle(2, key=newcomer), 2)
    execution, *_ = await run_job(fleet, doc, "before-trust")
    assert execution.status_details["reason"] == "unknown_key"
    trust_key(fleet.keys_dir, newcomer, "newcomer")  # trusted by dropping its key in
    execution, graph, *_ = await run_job(fleet, doc, "after-trust")
    assert execution.status == "SUCCEEDED" and serving(graph) == 2

    revoked = key_id(fleet.key.public_key())
    fleet.config(trust=f"{{keys_dir: {fleet.keys_dir}, revoked: [{revoked}]}}")
    doc3 = fleet.publish("v3", fleet.bundle(3), 3)
    execution, graph, *_ = await run_job(fleet, doc3, "revoked")
    assert execution.status_details["reason"] == "revoked_key"
    assert serving(graph) == 2 and fleet.serving() == 2


def test_a_cloud_section_is_checked_before_anything_starts(fleet: Fleet):
    config = fleet.config()
    text = config.read_text()
    config.write_text(text.replace("jobs:\n", "jobs:\n    pipelines: [nowhere]\n"))
    with pytest.raises(ConfigError, match="cloud.jobs.pipelines.0.*no pipeline named"):
        load_config(config, REGISTRY)
    config.write_text(text.replace(str(fleet.keys_dir), str(fleet.tmp / "missing")))
    with pytest.raises(ConfigError, match="keys_dir"):
        build_graph(load_config(config, REGISTRY), REGISTRY)
    config.write_text(text.replace('store:windturbine', 'builtin:windturbine-v1').replace(
        "jobs:\n", "jobs:\n    pipelines: [turbines]\n"))
    with pytest.raises(ConfigError, match="store:NAME"):
        load_config(config, REGISTRY)


async def test_a_thing_on_mutual_tls_gets_its_bundle_from_s3(fleet: Fleet, tmp_path: Path):
    """As on AWS: the device connects with its certificate (the broker takes the CN as
    the thing and confines it to its own topics) and downloads a pre-signed S3 URL."""
    pki = make_pki(tmp_path / "pki")
    cert, key = pki.client(THING)
    data = fleet.bundle(2)
    (tmp_path / "tls").mkdir()
    with Mosquitto(tmp_path / "tls", pki=pki, acl=True) as broker, S3Server() as s3:
        bucket = s3.create_bucket()
        s3.client().put_object(Bucket=bucket, Key="models/windturbine-2.tar.gz", Body=data)
        url = s3.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "models/windturbine-2.tar.gz"},
            ExpiresIn=600)
        config = fleet.config(broker=(
            f"{{host: localhost, port: {broker.tls_port}, reconnect_min_s: 0.1, "
            f"reconnect_max_s: 0.5, tls: {{ca_file: {pki.ca_file}, cert_file: {cert}, "
            f"key_file: {key}}}}}"))
        async with JobsService(broker.host, broker.port) as jobs, \
                daemon(config) as (graph, _):
            await jobs.queue_job(THING, "deploy-2", document(url, data, 2))
            execution = await finished(jobs, "deploy-2")
            assert execution.status == "SUCCEEDED", execution.status_details
            assert serving(graph) == 2
    assert fleet.serving() == 2


async def test_garbage_on_the_jobs_topics_is_counted_and_ignored(fleet: Fleet):
    doc = fleet.publish("v2", fleet.bundle(2), 2)
    base = f"$aws/things/{THING}/jobs"
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, _), \
            aiomqtt.Client(fleet.broker.host, fleet.broker.port) as rogue:
        # The device reads its pending list once it has subscribed: only then can it hear
        # these.
        await eventually(lambda: any(t.endswith("/jobs/get") for t, _ in jobs.requests))
        for topic, payload in ((f"{base}/start-next/accepted", b"{not json"),
                               (f"{base}/notify-next", b'{"execution": {"jobId": 7}}'),
                               (f"{base}/deploy-2/update/rejected", b'{"code": 1}'),
                               (f"{base}/start-next/accepted", b'{"clientToken": "stray"}')):
            await rogue.publish(topic, payload, qos=1)
        await eventually(lambda: graph.counters.total("jobs_replies_ignored") >= 4)
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED"
        assert serving(graph) == 2
