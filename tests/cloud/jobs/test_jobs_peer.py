"""The test jobs service on a real mosquitto broker, driven by a raw aiomqtt client that
acts as the device: real topics, real payloads, parsed by edged.cloud.jobs.protocol."""

import asyncio
import contextlib
import json

import aiomqtt
import pytest

from edged.cloud.jobs import protocol
from edged.cloud.jobs.document import parse_document
from tests.support.jobs_peer import JobsService, Presigner

THING = "turbine-7"
DOCUMENT = {
    "operation": "edged.deploy-model",
    # AWS's form: a path-style regional S3 URL, only the key URL-encoded.
    "bundle": {"url": "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/"
                      "models/windturbine%207%3Fv%3D2.tar}",
               "sha256": "b" * 64, "size": 4096},
    "model": {"name": "windturbine", "version": 7},
}
S3_URL = "https://s3.eu-west-1.amazonaws.com/models/windturbine%207%3Fv%3D2.tar"
SIGNED = S3_URL + "?X-Amz-Signature=f00"


class Device:
    """A raw MQTT client subscribed to its thing's pushes and replies."""

    def __init__(self, client: aiomqtt.Client, thing: str = THING) -> None:
        self.client = client
        self.thing = thing
        # Pushes and replies wait apart, so that waiting for one never swallows the other;
        # pushes stay in order until a test takes them.
        self.pushes: list[tuple[str, dict]] = []
        self.pushed = asyncio.Condition()
        self.inbox: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def read(self) -> None:
        async for message in self.client.messages:
            topic, payload = str(message.topic), json.loads(message.payload)
            if topic.endswith(("/notify", "/notify-next")):
                async with self.pushed:
                    self.pushes.append((topic, payload))
                    self.pushed.notify_all()
            else:
                self.inbox.put_nowait((topic, payload))

    async def expect(self, topic: str) -> dict:
        """The oldest push on ``topic`` not taken yet."""
        async with asyncio.timeout(5.0), self.pushed:
            while True:
                for index, (got, payload) in enumerate(self.pushes):
                    if got == topic:
                        del self.pushes[index]
                        return payload
                await self.pushed.wait()

    async def ask(self, topic: str, payload: bytes) -> tuple[str, dict]:
        """Publish a request, return (accepted|rejected, reply)."""
        await self.client.publish(topic, payload, qos=1)
        async with asyncio.timeout(5.0):
            while True:
                got, reply = await self.inbox.get()
                if got in (protocol.accepted(topic), protocol.rejected(topic)):
                    return got.rsplit("/", 1)[1], reply


@contextlib.asynccontextmanager
async def device(broker, thing=THING):
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"device-{thing}") as client:
        for topic in protocol.reply_subscriptions(thing):
            await client.subscribe(topic, qos=1)
        dev = Device(client, thing)
        reader = asyncio.create_task(dev.read(), name="device.read")
        try:
            yield dev
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def test_a_job_from_queue_to_succeeded(mosquitto):
    async with JobsService(mosquitto.host, mosquitto.port,
                           presign=lambda s3: s3 + "?X-Amz-Signature=f00") as jobs, \
            device(mosquitto) as dev:
        await jobs.queue_job(THING, "deploy-7", DOCUMENT)
        pushed = protocol.parse_notify_next(
            await dev.expect(protocol.notify_next_topic(THING)))
        assert pushed.job_id == "deploy-7"
        assert pushed.status == "QUEUED"

        outcome, raw = await dev.ask(protocol.start_next_topic(THING),
                                     protocol.start_next("tok-1", {"step": "accepted"}, 30))
        assert outcome == "accepted"
        reply = protocol.parse_accepted(raw)
        assert reply.client_token == "tok-1"
        execution = reply.execution
        assert (execution.job_id, execution.thing_name, execution.status) == (
            "deploy-7", THING, "IN_PROGRESS")
        assert execution.status_details == {"step": "accepted"}
        assert execution.started_at is not None
        assert execution.execution_number == 1
        queued = await dev.expect(protocol.notify_topic(THING))
        assert [j["jobId"] for j in queued["jobs"]["QUEUED"]] == ["deploy-7"]
        started = await dev.expect(protocol.notify_topic(THING))
        assert [j["jobId"] for j in started["jobs"]["IN_PROGRESS"]] == ["deploy-7"]
        # The placeholder arrives signed: the document is ready to act on.
        document = parse_document(execution.job_document)
        assert document.bundle.url == SIGNED
        assert not document.needs_fresh_url
        version = execution.version_number

        progress = protocol.clamp_status_details({"step": "download", "bytes": 2048})
        outcome, raw = await dev.ask(
            protocol.update_topic(THING, "deploy-7"),
            protocol.update("deploy-7", "IN_PROGRESS", "tok-2", progress.details, version))
        assert outcome == "accepted"
        reply = protocol.parse_accepted(raw)
        assert reply.client_token == "tok-2"
        assert reply.execution_state == protocol.ExecutionState(
            "IN_PROGRESS", {"step": "download", "bytes": "2048"}, version + 1)

        outcome, raw = await dev.ask(
            protocol.update_topic(THING, "deploy-7"),
            protocol.update("deploy-7", "IN_PROGRESS", "tok-3", {"step": "verify"}, version))
        assert outcome == "rejected"
        refused = protocol.parse_rejected(raw)
        assert refused.code == "VersionMismatch"
        assert refused.client_token == "tok-3"
        assert refused.execution_state.version_number == version + 1
        assert refused.execution_state.status_details == {"step": "download",
                                                          "bytes": "2048"}

        outcome, raw = await dev.ask(
            protocol.update_topic(THING, "deploy-7"),
            protocol.update("deploy-7", "SUCCEEDED", "tok-4", {"step": "done"}, version + 1))
        assert outcome == "accepted"
        assert protocol.parse_accepted(raw).execution_state.status == "SUCCEEDED"
        # Nothing pending any more: notify-next says so, without an execution.
        assert protocol.parse_notify_next(
            await dev.expect(protocol.notify_next_topic(THING))) is None

        outcome, raw = await dev.ask(protocol.start_next_topic(THING),
                                     protocol.start_next("tok-5"))
        assert outcome == "accepted"
        reply = protocol.parse_accepted(raw)
        assert reply.execution is None
        assert reply.client_token == "tok-5"
        assert jobs.execution(THING, "deploy-7").status == "SUCCEEDED"


async def test_describe_get_and_refusals(mosquitto):
    async with JobsService(mosquitto.host, mosquitto.port) as jobs, device(mosquitto) as dev:
        # Nothing pending: $next answers the timestamp alone, as start-next does.
        outcome, raw = await dev.ask(protocol.describe_topic(THING, "$next"),
                                     protocol.describe("$next", "t0"))
        assert outcome == "accepted" and protocol.parse_accepted(raw).execution is None
        assert set(raw) == {"timestamp", "clientToken"}
        await jobs.queue_job(THING, "first", DOCUMENT)
        await jobs.queue_job(THING, "second", {**DOCUMENT, "model": {"name": "windturbine",
                                                                       "version": 8}})
        outcome, raw = await dev.ask(protocol.get_pending_topic(THING),
                                     json.dumps({"clientToken": "t1"}).encode())
        assert outcome == "accepted"
        assert [j["jobId"] for j in raw["queuedJobs"]] == ["first", "second"]
        assert raw["inProgressJobs"] == []

        # Without presign the placeholder goes out unresolved: the device must notice.
        outcome, raw = await dev.ask(protocol.describe_topic(THING, "$next"),
                                     protocol.describe("$next", "t2"))
        execution = protocol.parse_accepted(raw).execution
        assert execution.job_id == "first"
        assert parse_document(execution.job_document).needs_fresh_url
        outcome, raw = await dev.ask(protocol.describe_topic(THING, "second"),
                                     protocol.describe("second", "t3", include_document=False))
        assert protocol.parse_accepted(raw).execution.job_document is None

        topic = protocol.update_topic(THING, "first")
        cases = [
            ({"status": "QUEUED", "clientToken": "t4"}, "InvalidRequest"),
            ({"status": "IN_PROGRESS", "statusDetails": {"bad key": "x"}}, "InvalidRequest"),
            ({"status": "IN_PROGRESS", "statusDetails": {"k": "x" * 1025}}, "InvalidRequest"),
            ({"status": "IN_PROGRESS", "stepTimeoutInMinutes": 0}, "InvalidRequest"),
        ]
        for request, code in cases:
            outcome, raw = await dev.ask(topic, json.dumps(request).encode())
            assert (outcome, raw["code"]) == ("rejected", code), request
        outcome, raw = await dev.ask(topic, protocol.update("first", "REJECTED", "t5",
                                                            {"reason": "not_newer"}, None))
        assert outcome == "accepted"
        outcome, raw = await dev.ask(topic, protocol.update("first", "IN_PROGRESS", "t6",
                                                            {}, None))
        refused = protocol.parse_rejected(raw)
        assert (refused.code, refused.client_token) == ("InvalidStateTransition", "t6")
        assert refused.execution_state.status == "REJECTED"

        # The next one moves up: notify-next announces it.
        pushed = protocol.parse_notify_next(await dev.expect(protocol.notify_next_topic(THING)))
        while pushed.job_id != "second":
            pushed = protocol.parse_notify_next(
                await dev.expect(protocol.notify_next_topic(THING)))
        outcome, raw = await dev.ask(protocol.update_topic(THING, "nope"),
                                     protocol.update("nope", "FAILED", "t7", {}, None))
        assert (outcome, raw["code"], raw["clientToken"]) == (
            "rejected", "ResourceNotFound", "t7")


async def test_start_next_prefers_in_progress_and_replies_stay_with_their_thing(mosquitto):
    async with JobsService(mosquitto.host, mosquitto.port) as jobs, \
            device(mosquitto) as dev, device(mosquitto, "turbine-8") as other:
        await jobs.queue_job(THING, "a", DOCUMENT)
        await jobs.queue_job(THING, "b", DOCUMENT)
        for token in ("s1", "s2"):
            _, raw = await dev.ask(protocol.start_next_topic(THING),
                                   protocol.start_next(token))
            assert protocol.parse_accepted(raw).execution.job_id == "a"
        # The other thing has nothing and hears nothing of turbine-7's jobs.
        _, raw = await other.ask(protocol.start_next_topic("turbine-8"),
                                 protocol.start_next("o1"))
        assert protocol.parse_accepted(raw).execution is None
        while not other.inbox.empty():
            topic, _ = other.inbox.get_nowait()
            assert protocol.parse_topic(topic, "turbine-8")
        assert all(protocol.parse_topic(topic, "turbine-8") for topic, _ in other.pushes)
        await jobs.cancel(THING, "a")
        _, raw = await dev.ask(protocol.start_next_topic(THING), protocol.start_next("s3"))
        assert protocol.parse_accepted(raw).execution.job_id == "b"


async def test_the_service_stops_cleanly(mosquitto):
    service = JobsService(mosquitto.host, mosquitto.port)
    async with service:
        pass
    assert service._tasks == []
    with pytest.raises(ValueError, match="32,768"):
        await JobsService("127.0.0.1", 1).queue_job(THING, "big", "x" * 40_000)


async def test_presigned_urls_expire_and_a_fresh_describe_gets_a_new_one(mosquitto):
    now = [1_700_000_000.0]
    presigner = Presigner("http://127.0.0.1:9/bundles", expires_s=60, clock=lambda: now[0])
    async with JobsService(mosquitto.host, mosquitto.port, presign=presigner) as jobs, \
            device(mosquitto) as dev:
        # The lab presigner serves plain http: only the explicit option lets that through.
        await jobs.queue_job(THING, "deploy-7", {**DOCUMENT, "options": {"allow_http": True}})
        _, raw = await dev.ask(protocol.start_next_topic(THING), protocol.start_next("p1"))
        url = parse_document(protocol.parse_accepted(raw).execution.job_document).bundle.url
        # The presigner got the placeholder's S3 URL; it signs the object by its key.
        assert presigner.issued["1"] == S3_URL
        assert Presigner.object_of(S3_URL) == "models/windturbine 7?v=2.tar"
        assert url.startswith("http://127.0.0.1:9/bundles/models/windturbine%207%3Fv%3D2.tar?")
        assert presigner.valid(url)
        now[0] += 61
        assert not presigner.valid(url)
        now[0] -= 61
        presigner.expire_all()
        assert not presigner.valid(url)
        _, raw = await dev.ask(protocol.describe_topic(THING, "deploy-7"),
                               protocol.describe("deploy-7", "p2"))
        fresh = protocol.parse_accepted(raw).execution.job_document["bundle"]["url"]
        assert fresh != url
        assert presigner.valid(fresh)
    assert not presigner.valid("http://127.0.0.1:9/bundles/x?X-Edged-Id=1")
    with pytest.raises(ValueError):
        Presigner("http://h", expires_s=30)


async def test_ended_and_deleted_executions_are_gone_as_aws_says(mosquitto):
    async with JobsService(mosquitto.host, mosquitto.port) as jobs, device(mosquitto) as dev:
        await jobs.queue_job(THING, "ended", DOCUMENT)
        await jobs.queue_job(THING, "deleted", DOCUMENT)
        await jobs.cancel(THING, "ended")
        outcome, raw = await dev.ask(protocol.describe_topic(THING, "ended"),
                                     protocol.describe("ended", "g1"))
        assert (outcome, raw["code"]) == ("rejected", "TerminalStateReached")
        outcome, raw = await dev.ask(protocol.update_topic(THING, "ended"),
                                     protocol.update("ended", "IN_PROGRESS", "g2", {}, None))
        assert (outcome, raw["code"]) == ("rejected", "InvalidStateTransition")
        await jobs.delete(THING, "deleted")
        for topic, payload in (
                (protocol.describe_topic(THING, "deleted"), protocol.describe("deleted", "g3")),
                (protocol.update_topic(THING, "deleted"),
                 protocol.update("deleted", "SUCCEEDED", "g4", {}, None))):
            outcome, raw = await dev.ask(topic, payload)
            assert (outcome, raw["code"]) == ("rejected", "ResourceNotFound")


async def test_throttling_and_internal_errors_on_demand(mosquitto):
    async with JobsService(mosquitto.host, mosquitto.port) as jobs, device(mosquitto) as dev:
        await jobs.queue_job(THING, "deploy-7", DOCUMENT)
        jobs.refuse("RequestThrottled", times=2, operation="update", status="SUCCEEDED")
        jobs.refuse("InternalError", operation="get")
        with pytest.raises(ValueError, match="AWS never answers"):
            jobs.refuse("Throttling")
        topic = protocol.update_topic(THING, "deploy-7")
        outcome, raw = await dev.ask(topic, protocol.update("deploy-7", "IN_PROGRESS", "u1",
                                                            {}, None))
        assert outcome == "accepted"  # another status: not refused
        for token in ("u2", "u3"):
            outcome, raw = await dev.ask(topic, protocol.update("deploy-7", "SUCCEEDED", token,
                                                                {}, None))
            assert (outcome, raw["code"], raw["clientToken"]) == (
                "rejected", "RequestThrottled", token)
        outcome, raw = await dev.ask(protocol.get_pending_topic(THING),
                                     json.dumps({"clientToken": "u4"}).encode())
        assert (outcome, raw["code"]) == ("rejected", "InternalError")
        outcome, _ = await dev.ask(topic, protocol.update("deploy-7", "SUCCEEDED", "u5", {},
                                                          None))
        assert outcome == "accepted"
        assert [code for _, _, code in jobs.refused] == [
            "RequestThrottled", "RequestThrottled", "InternalError"]
        assert jobs.execution(THING, "deploy-7").status == "SUCCEEDED"


@pytest.mark.parametrize("value", [
    "zero\u200bwidth", "\ufeffbom", "soft\u00adhyphen", "lone \ud800 surrogate",
    "private \ue000 use", "unassigned \u0378", "line\nbreak", "bidi \u202e override",
    "", "x" * 1025, "\U0001f600" * 513,  # 1,026 UTF-16 code units
])
async def test_status_details_values_must_match_not_p_c(mosquitto, value):
    async with JobsService(mosquitto.host, mosquitto.port) as jobs, device(mosquitto) as dev:
        await jobs.queue_job(THING, "deploy-7", DOCUMENT)
        request = {"status": "IN_PROGRESS", "clientToken": "c1",
                   "statusDetails": {"detail": value}}
        outcome, raw = await dev.ask(protocol.update_topic(THING, "deploy-7"),
                                     json.dumps(request).encode())
        assert (outcome, raw["code"]) == ("rejected", "InvalidRequest"), raw
        assert jobs.execution(THING, "deploy-7").status == "QUEUED"


@pytest.mark.parametrize("token", ["with space", "x" * 65, "é", ""])
async def test_client_tokens_beyond_the_limits_are_invalid_requests(mosquitto, token):
    async with JobsService(mosquitto.host, mosquitto.port), device(mosquitto) as dev:
        outcome, raw = await dev.ask(protocol.get_pending_topic(THING),
                                     json.dumps({"clientToken": token}).encode())
        assert (outcome, raw["code"]) == ("rejected", "InvalidRequest")
        assert "clientToken" not in raw


async def test_step_timers_and_in_progress_timeouts_end_in_timed_out(mosquitto):
    now = [1_700_000_000.0]
    async with JobsService(mosquitto.host, mosquitto.port, clock=lambda: now[0]) as jobs, \
            device(mosquitto) as dev:
        await jobs.queue_job(THING, "stepped", DOCUMENT)
        await jobs.queue_job(THING, "bounded", DOCUMENT, in_progress_timeout_minutes=30)
        _, raw = await dev.ask(protocol.start_next_topic(THING),
                               protocol.start_next("s1", step_timeout_minutes=10))
        assert protocol.parse_accepted(raw).execution.job_id == "stepped"
        update = protocol.update_topic(THING, "stepped")
        now[0] += 9 * 60
        # An update without a step timer does not renew it; one with a timer does.
        await dev.ask(update, protocol.update("stepped", "IN_PROGRESS", "s2", {}, None))
        now[0] += 2 * 60
        await jobs.expire_timers()
        assert jobs.execution(THING, "stepped").status == "TIMED_OUT"
        outcome, raw = await dev.ask(update, protocol.update("stepped", "SUCCEEDED", "s3",
                                                             {}, None))
        assert (outcome, raw["code"]) == ("rejected", "InvalidStateTransition")
        assert raw["executionState"]["status"] == "TIMED_OUT"

        # The in-progress timeout runs whatever the device renews.
        update = protocol.update_topic(THING, "bounded")
        for token in ("b1", "b2", "b3", "b4"):
            outcome, _ = await dev.ask(update, protocol.update(
                "bounded", "IN_PROGRESS", token, {}, None, step_timeout_minutes=10))
            assert outcome == "accepted", token
            now[0] += 8 * 60
        await jobs.expire_timers()
        assert jobs.execution(THING, "bounded").status == "TIMED_OUT"
        outcome, raw = await dev.ask(protocol.describe_topic(THING, "bounded"),
                                     protocol.describe("bounded", "b5"))
        assert (outcome, raw["code"]) == ("rejected", "TerminalStateReached")
    with pytest.raises(ValueError, match="inProgressTimeoutInMinutes"):
        await JobsService("127.0.0.1", 1).queue_job(THING, "x", DOCUMENT,
                                                     in_progress_timeout_minutes=0)


@pytest.mark.parametrize("url", [
    # The whole URL encoded (what docs/jobs.md once showed).
    "${aws:iot:s3-presigned-url-v2:https%3A%2F%2Fs3.eu-west-1.amazonaws.com%2Fb%2Fk.tar}",
    # v2 without a region, a virtual-hosted bucket, a raw space or '?' in the key.
    "${aws:iot:s3-presigned-url-v2:https://s3.amazonaws.com/models/k.tar}",
    "${aws:iot:s3-presigned-url-v2:https://models.s3.eu-west-1.amazonaws.com/k.tar}",
    "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/models/a b.tar}",
    "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/models/a?b.tar}",
    "${aws:iot:s3-presigned-url-v2:https://s3.eu-west-1.amazonaws.com/models/a%3f.tar}",
    "${aws:iot:s3-presigned-url-v2:http://s3.eu-west-1.amazonaws.com/models/k.tar}",
    "${aws:iot:s3-presigned-url:https%3A%2F%2Fs3.amazonaws.com%2Fmodels%2Fk.tar}",
    "${aws:iot:s3-presigned-url:https://example.com/models/k.tar}",
])
async def test_placeholders_only_in_aws_forms(url):
    service = JobsService("127.0.0.1", 1)
    with pytest.raises(ValueError, match="placeholder"):
        await service.queue_job(THING, "p", {**DOCUMENT, "bundle": {**DOCUMENT["bundle"],
                                                                    "url": url}})
    assert service.jobs == {}
