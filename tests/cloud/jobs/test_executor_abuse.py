"""Issue 13, item 7, in a running daemon graph against mosquitto and the jobs service
peer: a job document or a signed manifest that gives a key twice is REJECTED, the old
model keeps serving, decisions go on, and the next job still runs."""

from __future__ import annotations

import json

from edged.model.bundle import extract_bundle, pack_bundle, sign_manifest
from edged.testing import eventually
from tests.support.jobs_peer import JobsService

from .conftest import THING, Fleet, finished
from .test_executor import daemon, serving


def _repeat_key(doc: dict, section: str, key: str, decoy: object) -> str:
    """``doc`` as JSON text whose ``section`` gives ``key`` twice: ``decoy`` first, the
    true value last (the one plain json.loads keeps)."""
    text = json.dumps(doc)
    entry = f'"{key}": {json.dumps(doc[section][key])}'
    assert text.count(entry) == 1
    return text.replace(entry, f'"{key}": {json.dumps(decoy)}, {entry}')


def _bundle_listing_a_file_twice(fleet: Fleet, version: int) -> bytes:
    """A bundle signed by the trusted key whose manifest lists model.onnx twice, a decoy
    hash first and the true one last."""
    source = fleet.tmp / "bundles" / "to-tamper.tar.gz"
    source.write_bytes(fleet.bundle(version))
    stage = extract_bundle(source, fleet.tmp / "stage")
    manifest = stage / "manifest.json"
    text = manifest.read_text()
    true = json.loads(text)["files"]["model.onnx"]
    entry = f'"model.onnx": "{true}"'
    manifest.write_text(text.replace(entry, f'"model.onnx": "{"0" * 64}", {entry}'))
    (stage / "manifest.sig").write_bytes(sign_manifest(manifest.read_bytes(), fleet.key))
    return pack_bundle({p.name: p for p in stage.iterdir()},
                       fleet.tmp / "twice.tar.gz").read_bytes()


async def test_repeated_keys_in_a_document_or_a_manifest_are_rejected(fleet: Fleet):
    good = fleet.bundle(2)
    doc = fleet.publish("v2", good, 2)
    # The sha256 a reviewer reads first is not the one plain json.loads acts on.
    twice_in_document = _repeat_key(doc, "bundle", "sha256", "0" * 64)
    twice_in_manifest = fleet.publish("twice", _bundle_listing_a_file_twice(fleet, 2), 2)
    async with JobsService(fleet.broker.host, fleet.broker.port) as jobs, \
            daemon(fleet.config()) as (graph, recorder):
        for job_id, sent in (("doc-twice", twice_in_document),
                             ("manifest-twice", twice_in_manifest)):
            await jobs.queue_job(THING, job_id, sent)
            execution = await finished(jobs, job_id)
            assert (execution.status, execution.status_details.get("reason")) == \
                ("REJECTED", "malformed"), (job_id, execution.status_details)
            assert "appears twice" in execution.status_details["detail"], job_id
            assert serving(graph) == 1 and fleet.serving() == 1, job_id
        assert graph.counters.get("jobs_failed", status="REJECTED", reason="malformed") == 2
        count = len(recorder.decisions)
        await eventually(lambda: len(recorder.decisions) > count)  # still deciding
        # Nothing is stuck: the next job, well-formed, installs its model.
        await jobs.queue_job(THING, "deploy-2", doc)
        execution = await finished(jobs, "deploy-2")
        assert execution.status == "SUCCEEDED", execution.status_details
        assert serving(graph) == 2
