"""Pre-signed capture uploads, all real parts: mosquitto between the device and the
fleet's signer (edged_cloud.upload_signer, as a process or its ``serve()`` in this
loop), moto's S3 server behind the URLs, and a device with no AWS credentials at all.

moto checks neither SigV4 signatures nor Content-MD5 nor a URL's expiry; that the
signer binds each URL to its object's MD5 is checked on the URL itself
(test_a_url_is_bound_to_its_objects_md5), the rest is S3's own business."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import os
import re
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml

from edged.base.metrics import Counters
from edged.capture.destinations import DeliveryError, PresignedDestination
from edged.capture.url_protocol import KEY_PATTERN, ObjectToSign, key_problem, reply_topic
from edged.cloud.link import Cloud
from edged.cloud.upload_urls import UploadUrlClient
from edged.config import ConfigError, parse_config
from edged.mqtt.link import BrokerConfig, BrokerLink
from edged.plugin.manager import make_plugin_manager
from edged.testing import eventually, running_graph, stop_task
from edged_cloud.upload_signer import Signer, s3_client, serve, thing_of
from tests.support import EdgedProcess, LoggedProcess, Mosquitto, MqttPeer, S3Server

THING = "gw-presign-7"
PREFIX = "fleet/captures"
HOUR_KEY = (f"device={THING}/model=windturbine/version=1/date=2026-12-05/hour=20/"
            f"{uuid.UUID(int=7)}.jsonl.gz")


@pytest.fixture
def no_aws_credentials(monkeypatch):
    """The device's environment: no keys, no shared files, no instance metadata."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_server():
    with S3Server() as server:
        yield server


def device_config(tmp_path: Path, broker_port: int, *, thing_name: str | None = None,
                  **upload: object) -> Path:
    cloud: dict = {"broker": {"host": "127.0.0.1", "port": broker_port,
                              "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}}
    if thing_name is not None:
        cloud["thing_name"] = thing_name
    config = {
        "device": {"id": THING},
        "log": {"level": "info", "format": "json", "stats_interval_s": 0},
        "state_dir": str(tmp_path / "state"),
        "shutdown": {"stage_timeout_s": 3},
        "sources": {"farm": {"type": "simulator", "turbines": 3, "rate_hz": 20, "seed": 3,
                             "history_s": 25, "faults": "1:voltage@0-600"}},
        "pipelines": {"wt": {
            "inputs": ["farm"],
            "preprocessor": {"type": "windturbine"},
            "inference": {"type": "onnx", "model": "builtin:windturbine-v1"},
            "interval_s": 0.1,
            "capture": {
                "rate": {"every": 2},
                "upload": {"interval_s": 0.1, "retry_backoff_s": 0.05,
                           "max_backoff_s": 0.2, **upload},
                "destination": {"type": "presigned", "timeout_s": 2},
            },
        }},
        "cloud": cloud,
    }
    path = tmp_path / "edged.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def captured(s3: S3Server, bucket: str) -> dict[str, list[dict]]:
    """Every capture object in the bucket: key -> its records."""
    return {key: [json.loads(line) for line in gzip.decompress(body).splitlines()]
            for key, body in s3.objects(bucket, PREFIX).items()}


def spooled(state: Path) -> int:
    return sum(len(p.read_bytes().splitlines())
               for p in (state / "capture" / "wt" / "segments").glob("*.jsonl"))


def signer_for(s3: S3Server, bucket: str, **changes) -> Signer:
    client = s3_client(s3.endpoint_url, "us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    return Signer(client, bucket, **{"prefix": PREFIX, **changes})


def assert_capture_objects(s3: S3Server, bucket: str, objects: dict[str, list[dict]]):
    """Keys in this device's partitions, bodies as signed: S3's ETag is the MD5."""
    client = s3.client()
    for key, records in objects.items():
        relative = key.removeprefix(f"{PREFIX}/")
        assert KEY_PATTERN.fullmatch(relative) and key_problem(relative, THING) is None, key
        assert relative.startswith(f"device={THING}/model=windturbine/version=1/date=")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        assert etag == hashlib.md5(body).hexdigest()
        assert {r["device_id"] for r in records} == {THING}


# -- the daemon and the signer as a user runs them ----------------------------------------


async def test_a_daemon_without_aws_credentials_uploads_through_signed_urls(
        tmp_path, s3_server, no_aws_credentials):
    bucket = s3_server.create_bucket()
    with Mosquitto(tmp_path) as broker, LoggedProcess(
            ["edged_cloud.upload_signer", "--host", broker.host, "--port",
             str(broker.port), "--no-tls", "--bucket", bucket, "--prefix", PREFIX,
             "--endpoint-url", s3_server.endpoint_url, "--region", "us-east-1"],
            env=S3Server.CREDENTIALS) as signer:
        await signer.wait_for("upload_signer_ready")
        with EdgedProcess(device_config(tmp_path, broker.port)) as daemon:
            await daemon.wait_for("graph_started", seconds=60)
            await eventually(lambda: sum(map(len, captured(s3_server, bucket)
                                             .values())) >= 20, seconds=60)
            assert daemon.stop() == 0
        assert signer.stop() == 0
        accepted = signer.events("upload_urls_signed")
    objects = captured(s3_server, bucket)
    assert_capture_objects(s3_server, bucket, objects)
    ids = [r["id"] for records in objects.values() for r in records]
    assert len(ids) == len(set(ids)) >= 20
    assert any(r["anomalous"] for records in objects.values() for r in records)
    assert len(accepted) >= 1 and {e["thing"] for e in accepted} == {THING}
    assert not daemon.events("capture_upload_set_aside")
    assert not (tmp_path / "state" / "capture" / "wt" / "failed").exists()
    # Nothing the daemon saw as a URL reached its log: the signature stays secret.
    assert "X-Amz-Signature" not in json.dumps(daemon.lines)


async def test_captures_wait_in_the_spool_until_a_signer_answers(
        tmp_path, s3_server, no_aws_credentials):
    """No signer at first: every upload times out (transient) and the records wait on
    disk; a signer comes up and every one of them goes out, once."""
    bucket = s3_server.create_bucket()
    signer_counters = Counters()
    with Mosquitto(tmp_path) as broker:
        async with running_graph(device_config(tmp_path, broker.port)) as graph:
            counters = graph.counters
            await eventually(lambda: counters.get("capture_upload_failures",
                                                  pipeline="wt") >= 2, seconds=30)
            assert counters.get("capture_uploaded", pipeline="wt") == 0
            assert spooled(tmp_path / "state") > 0
            signing = asyncio.create_task(serve(
                signer_for(s3_server, bucket), BrokerConfig(host=broker.host, port=broker.port),
                counters=signer_counters))
            try:
                waiting = counters.get("capture_records", pipeline="wt")
                await eventually(lambda: counters.get("capture_uploaded", pipeline="wt")
                                 >= waiting, seconds=30)
            finally:
                await stop_task(signing)
        uploaded = counters.get("capture_uploaded", pipeline="wt")
    objects = captured(s3_server, bucket)
    assert_capture_objects(s3_server, bucket, objects)
    ids = [r["id"] for records in objects.values() for r in records]
    assert len(ids) == len(set(ids)) == uploaded
    # Everything captured is in S3 or still in the spool for the next start.
    assert counters.get("capture_records", pipeline="wt") == uploaded + spooled(
        tmp_path / "state")
    assert counters.get("capture_failed", pipeline="wt") == 0
    assert counters.get("upload_url_replies", result="accepted") >= 1
    assert signer_counters.get("upload_url_requests", result="accepted") >= 1
    assert signer_counters.get("upload_url_requests", result="rejected") == 0


# -- the device's client against a real signer on the broker -------------------------------


async def cloud_client(broker: Mosquitto, thing: str, counters: Counters):
    """An UploadUrlClient on its own cloud link, running: (client, the running Cloud)."""
    link = BrokerLink(BrokerConfig(host=broker.host, port=broker.port, client_id=thing),
                      name="cloud", device_id=thing, counters=counters)
    client = UploadUrlClient(link=link, thing=thing, counters=counters)
    cloud = Cloud(link, [client])
    await cloud.__aenter__()
    task = asyncio.create_task(cloud.run())
    await link.wait_connected()
    return client, cloud, task


class Running:
    """``cloud_client`` as an async context manager."""

    def __init__(self, broker: Mosquitto, thing: str, counters: Counters) -> None:
        self.args = broker, thing, counters

    async def __aenter__(self) -> UploadUrlClient:
        self.client, self.cloud, self.task = await cloud_client(*self.args)
        return self.client

    async def __aexit__(self, *exc: object) -> None:
        await stop_task(self.task)
        await self.cloud.__aexit__(None, None, None)


@pytest.fixture
async def signer_on_broker(tmp_path, s3_server):
    """mosquitto and a signer serving it for a fresh bucket: (broker, bucket, counters)."""
    bucket = s3_server.create_bucket()
    counters = Counters()
    with Mosquitto(tmp_path) as broker:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(
            signer_for(s3_server, bucket), BrokerConfig(host=broker.host, port=broker.port),
            counters=counters, on_ready=ready.set))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield broker, bucket, counters
        finally:
            await stop_task(task)


async def test_a_thing_gets_urls_for_its_own_partition_only(signer_on_broker, s3_server,
                                                           no_aws_credentials):
    broker, bucket, signer_counters = signer_on_broker
    counters = Counters()
    body = b'{"id": "r1"}\n'
    async with Running(broker, THING, counters) as client:
        destination = PresignedDestination(timeout_s=5)
        destination.signer = client
        destination.open()
        await asyncio.to_thread(destination.write, [(HOUR_KEY, body)])

        other = HOUR_KEY.replace(f"device={THING}", "device=gw-somebody-else")
        with pytest.raises(DeliveryError) as refused:
            await client.sign([ObjectToSign.of(other, body)], timeout_s=5)
    assert s3_server.objects(bucket, PREFIX) == {f"{PREFIX}/{HOUR_KEY}": body}
    assert not refused.value.transient  # asking again cannot help: set aside after attempts
    assert "Forbidden" in str(refused.value) and "device=gw-somebody-else" in str(
        refused.value)
    assert counters.get("upload_url_replies", result="accepted") == 1
    assert counters.get("upload_url_replies", result="rejected") == 1
    assert signer_counters.get("upload_url_requests", result="rejected") == 1


async def test_a_url_is_bound_to_its_objects_md5(signer_on_broker, no_aws_credentials):
    broker, _, _ = signer_on_broker
    body = b"twelve bytes"
    async with Running(broker, THING, Counters()) as client:
        [signed] = await client.sign([ObjectToSign.of(HOUR_KEY, body)], timeout_s=5)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(signed.url).query)
    assert query["X-Amz-SignedHeaders"] == ["content-md5;host"]
    assert signed.headers == {"Content-MD5": base64.b64encode(
        hashlib.md5(body).digest()).decode()}
    assert urllib.parse.unquote(urllib.parse.urlsplit(signed.url).path).endswith(
        f"/{PREFIX}/{HOUR_KEY}")


class FakeSigner(MqttPeer):
    """Answers every request with ``reply(request)`` (bytes), or not at all (None)."""

    def __init__(self, broker: Mosquitto, reply) -> None:
        super().__init__(broker.host, broker.port, ["edged/+/capture/upload-urls"],
                         identifier="test-fake-signer")
        self.reply = reply

    async def handle(self, client, topic: str, payload: bytes) -> None:
        answer = self.reply(json.loads(payload))
        if answer is not None:
            await client.publish(reply_topic(thing_of(topic), "accepted"), answer, qos=1)


async def test_nonsense_from_the_signer_fails_the_request_at_once(tmp_path):
    replies = {
        "no urls": lambda r: json.dumps({"clientToken": r["clientToken"]}),
        "a url that is not http": lambda r: json.dumps(
            {"clientToken": r["clientToken"],
             "urls": [{"key": HOUR_KEY, "url": "file:///etc/passwd"}]}),
        "the wrong key": lambda r: json.dumps(
            {"clientToken": r["clientToken"],
             "urls": [{"key": HOUR_KEY.replace("hour=20", "hour=21"),
                       "url": "http://127.0.0.1:9/x"}]}),
    }
    counters = Counters()
    with Mosquitto(tmp_path) as broker:
        async with Running(broker, THING, counters) as client:
            for what, reply in replies.items():
                async with FakeSigner(broker, reply):
                    with pytest.raises(DeliveryError) as failed:
                        await client.sign([ObjectToSign.of(HOUR_KEY, b"x")], timeout_s=10)
                assert not failed.value.transient, what
                assert "the signer's" in str(failed.value), what
            async with FakeSigner(broker, lambda r: b"\xff not json"):
                with pytest.raises(DeliveryError) as silent:
                    await client.sign([ObjectToSign.of(HOUR_KEY, b"x")], timeout_s=0.5)
    # A reply without a readable token cannot be matched: the request times out, and
    # asking again later may find a signer that works.
    assert silent.value.transient and "within 0.5 s" in str(silent.value)
    assert counters.get("upload_url_replies", result="invalid") == 3
    assert counters.get("upload_url_replies", result="accepted") == 1  # the wrong key


async def test_without_a_running_cloud_link_an_upload_waits(no_aws_credentials):
    destination = PresignedDestination()
    with pytest.raises(DeliveryError) as unattached:
        destination.write([(HOUR_KEY, b"x")])
    assert unattached.value.transient
    link = BrokerLink(BrokerConfig(host="127.0.0.1", port=1), name="cloud",
                      device_id=THING, counters=Counters())
    destination.signer = UploadUrlClient(link=link, thing=THING, counters=Counters())
    with pytest.raises(DeliveryError) as stopped:
        destination.write([(HOUR_KEY, b"x")])
    assert stopped.value.transient and "not running" in str(stopped.value)


async def test_an_s3_refusal_of_a_put_says_why(signer_on_broker, s3_server,
                                               no_aws_credentials):
    """The bucket is gone: S3's NoSuchBucket comes back in the error, final; the URL's
    signature does not."""
    broker, bucket, _ = signer_on_broker
    s3_server.client().delete_bucket(Bucket=bucket)
    async with Running(broker, THING, Counters()) as client:
        destination = PresignedDestination(timeout_s=5)
        destination.signer = client
        destination.open()
        with pytest.raises(DeliveryError) as refused:
            await asyncio.to_thread(destination.write, [(HOUR_KEY, b"x")])
    assert not refused.value.transient
    assert re.search(r"PUT http://127\.0\.0\.1:\d+/.+: HTTP 404 NoSuchBucket",
                     str(refused.value))
    assert "X-Amz" not in str(refused.value)


# -- the signer's answers --------------------------------------------------------------------


def request(*keys: str, token: str = "t-1", **changes) -> bytes:
    objects = [{"key": k, "bytes": 1, "md5": ObjectToSign.of(k, b"x").md5} for k in keys]
    return json.dumps({"clientToken": token, "objects": objects, **changes}).encode()


@pytest.fixture
def signer(s3_server):
    return signer_for(s3_server, "bucket-1", clock=lambda: 1_000.0, expires_s=600)


def test_the_signer_answers_a_request_with_one_url_per_key(signer):
    second = HOUR_KEY.replace("hour=20", "hour=21")
    outcome, reply = signer.answer(THING, request(HOUR_KEY, second))
    assert outcome == "accepted"
    assert reply["clientToken"] == "t-1" and reply["expiresAt"] == 1_600
    assert [u["key"] for u in reply["urls"]] == [HOUR_KEY, second]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(reply["urls"][0]["url"]).query)
    assert query["X-Amz-Expires"] == ["600"]


@pytest.mark.parametrize(("payload", "code", "says"), [
    (b"{not json", "InvalidRequest", "not JSON"),
    (request(HOUR_KEY, token=""), "InvalidRequest", "clientToken"),
    (request(), "InvalidRequest", "objects"),
    (request(*[HOUR_KEY] * 1001), "InvalidRequest", "objects"),
    (request(HOUR_KEY, extra=1), "InvalidRequest", "extra"),
    (json.dumps({"clientToken": "t", "objects": [{"key": HOUR_KEY, "bytes": 1,
                                                   "md5": "nope"}]}).encode(),
     "InvalidRequest", "objects.0.md5"),
    (request(HOUR_KEY.replace(f"device={THING}", "device=other")), "Forbidden",
     "not in this thing's partition"),
    (request(f"device={THING}/../device=other/x.jsonl.gz"), "Forbidden",
     "not a capture object key"),
    (request(f"device={THING}/model=m/version=1/date=2026-12-05/hour=20/notes.txt"),
     "Forbidden", "objects[0].key"),
])
def test_the_signer_refuses_what_it_must_not_sign(signer, payload, code, says):
    outcome, reply = signer.answer(THING, payload)
    assert outcome == "rejected" and reply["code"] == code
    assert says in reply["message"], reply["message"]


def test_a_signer_without_credentials_answers_unavailable(no_aws_credentials):
    signer = Signer(s3_client(region="us-east-1"), "bucket-1")
    outcome, reply = signer.answer(THING, request(HOUR_KEY))
    assert (outcome, reply["code"]) == ("rejected", "Unavailable")
    assert "NoCredentialsError" in reply["message"]


def test_a_urls_lifetime_is_one_s3_allows(s3_server):
    with pytest.raises(ValueError, match="expires_s"):
        signer_for(s3_server, "b", expires_s=8 * 86400)


def test_the_signer_reads_the_thing_from_the_topic():
    assert thing_of(f"edged/{THING}/capture/upload-urls") == THING
    assert thing_of("edged/a/b/capture/upload-urls") is None
    assert thing_of("edged/+/capture/upload-urls") is None


# -- config ----------------------------------------------------------------------------------


def parse(path: Path, edit=lambda c: None):
    config = yaml.safe_load(path.read_text())
    edit(config)
    _, registry = make_plugin_manager()
    return parse_config(yaml.safe_dump(config), str(path), registry)


def test_presigned_uploads_need_the_cloud_link(tmp_path):
    path = device_config(tmp_path, 1883)
    assert parse(path).raw.pipelines["wt"].capture.destination.type == "presigned"
    with pytest.raises(ConfigError) as missing:
        parse(path, lambda c: c.pop("cloud"))
    assert "pipelines.wt.capture.destination.type" in str(missing.value)
    assert "add a cloud: section" in str(missing.value)


def test_presigned_uploads_need_the_thing_name_to_be_the_device_id(tmp_path):
    with pytest.raises(ConfigError) as mismatch:
        parse(device_config(tmp_path, 1883, thing_name="gw-other"))
    assert "cloud.thing_name ('gw-other') to be device.id" in str(mismatch.value)
    assert parse(device_config(tmp_path, 1883, thing_name=THING)) is not None
