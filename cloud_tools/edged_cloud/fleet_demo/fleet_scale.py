"""A rollout at fleet scale, simulated in one process: how far the abort criteria let a bad
model go, and how long a good one takes at the rollout rate (benchmarks/fleet_rollout.py).

What is real: moto's server holds the things, their group and the jobs, created by
``edged-cloud deploy``'s own functions with its default rollout settings; the local jobs
service (``edged_cloud.local_jobs``) applies AWS's rate and abort rules and carries the
executions over the real IoT Jobs topics on a real mosquitto. What is light: each device is
a small job executor (``LightExecutor``) that speaks those topics, parses the document with
the device's own parser, waits ``device_s`` (its download, verification, golden pairs and
swap) and answers SUCCEEDED, or REJECTED for a version listed as tampered, as a device
whose signature check failed does. Its verdict is given, not computed: the real daemons'
verdicts are the fleet demo's to show.

Time is compressed: a minute of the rate rules lasts ``minute_s`` seconds, and a device's
work ``device_s * minute_s / 60`` seconds, so that the run is the real rollout played
``60 / minute_s`` times faster; its real-time length is the measured one times that factor.
What cannot be compressed (this process's own handling of messages, a few ms each) is
inflated by the same factor: a larger ``minute_s`` gives a truer figure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.cloud.jobs import protocol
from edged.cloud.jobs.document import parse_document
from edged_cloud import rollout
from edged_cloud.fleet_demo.local_services import LocalAws, LocalBroker, raise_open_files
from edged_cloud.local_jobs.service import LocalJobsService

#: Small requests each waiting for the last: Nagle's algorithm would hold every one back
#: for the peer's delayed ACK (40 ms), as the device's own MQTT link knows (edged.mqtt.link).
NODELAY = (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": []})
GOOD_VERSION, BAD_VERSION = 2, 3


@dataclass
class DeviceLog:
    """When (monotonic seconds) a device was told of a job and ended it, and how."""

    notified: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)


class LightExecutor:
    """The job executors of ``things`` on one MQTT connection (one thing each by default;
    several where open files are short). For each thing: notify-next -> start-next ->
    (``device_s``) -> update SUCCEEDED, or REJECTED for ``tampered`` versions."""

    def __init__(self, host: str, port: int, things: list[str], *, device_s: float,
                 tampered: set[int], logs: dict[str, DeviceLog]) -> None:
        self.host, self.port = host, port
        self.things = things
        self.device_s = device_s
        self.tampered = tampered
        self.logs = logs  # job id -> what its devices did
        self.refused = 0
        self._client: Any = None
        self._tasks: set[asyncio.Task] = set()
        self._tokens = itertools.count()
        self._working: set[tuple[str, str]] = set()

    async def connect(self) -> None:
        import aiomqtt

        client = aiomqtt.Client(self.host, self.port,
                                identifier=f"light-{self.things[0]}-{uuid.uuid4().hex[:6]}",
                                socket_options=(NODELAY,))
        await client.__aenter__()
        for thing in self.things:
            base = protocol.prefix(thing)
            await client.subscribe([(f"{base}/notify-next", 1), (f"{base}/start-next/+", 1),
                                    (f"{base}/+/update/+", 1)])
        self._client = client
        self._tasks.add(asyncio.create_task(self._serve()))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.__aexit__(None, None, None)

    def _token(self) -> str:
        return f"light-{next(self._tokens)}"

    async def _serve(self) -> None:
        async for message in self._client.messages:
            parsed = protocol.parse_topic(str(message.topic))
            payload = json.loads(bytes(message.payload) or b"{}")
            if parsed.operation == "notify-next" and payload.get("execution"):
                job = payload["execution"]["jobId"]
                self.logs.setdefault(job, DeviceLog()).notified.setdefault(
                    parsed.thing, time.monotonic())
                await self._client.publish(protocol.start_next_topic(parsed.thing),
                                           protocol.start_next(self._token()), qos=1)
            elif parsed.operation == "start-next" and parsed.reply == "accepted" and \
                    payload.get("execution"):
                execution = payload["execution"]
                key = (parsed.thing, execution["jobId"])
                if key not in self._working:
                    self._working.add(key)
                    task = asyncio.create_task(self._work(parsed.thing, execution))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif parsed.reply == "rejected":
                self.refused += 1

    async def _work(self, thing: str, execution: dict[str, Any]) -> None:
        document = parse_document(execution["jobDocument"])
        version = document.model.version
        await asyncio.sleep(self.device_s)
        if version in self.tampered:
            status, details = "REJECTED", {"reason": "bad_signature",
                                           "version": str(version)}
        else:
            status, details = "SUCCEEDED", {"version": str(version)}
        job = execution["jobId"]
        await self._client.publish(
            protocol.update_topic(thing, job),
            protocol.update(job, status, self._token(), details,
                            execution["versionNumber"]), qos=1)
        log = self.logs.setdefault(job, DeviceLog())
        log.ended[thing] = time.monotonic()
        log.status[thing] = status


def _minutes_timeline(log: DeviceLog, start: float, minute_s: float) -> list[int]:
    """How many devices were told of the job in each (compressed) minute."""
    counts = Counter(int((t - start) // minute_s) for t in log.notified.values())
    return [counts.get(m, 0) for m in range(max(counts, default=-1) + 1)]


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values) or [0.0]
    return {"p50": round(ordered[len(ordered) // 2], 3),
            "p99": round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 3),
            "max": round(ordered[-1], 3)}


async def _roll_out(jobs: LocalJobsService, iot: Any, s3: Any, *, job_id: str, bucket: str,
                    key: str, version: int, group: str, role: str,
                    settings: rollout.RolloutSettings, timeout_s: float) -> float:
    """Create the job as ``edged-cloud deploy`` does; wait for the service to finish it.
    Returns when it was created (monotonic)."""
    def create() -> None:
        bundle = rollout.bundle_in_s3(s3, bucket, key)
        document = rollout.job_document(bundle, iot.meta.region_name, "windturbine",
                                        version, allow_http=True)
        rollout.create(iot, rollout.Deployment(
            job_id=job_id, targets=[rollout.group_arn(iot, group)], document=document,
            role_arn=role, settings=settings))

    await asyncio.to_thread(create)
    started = time.monotonic()
    deadline = started + timeout_s
    while not (job_id in jobs.rollouts and jobs.rollouts[job_id].done):
        if time.monotonic() > deadline:
            raise TimeoutError(f"rollout {job_id} did not finish in {timeout_s:.0f} s")
        await asyncio.sleep(0.02)
    return started


def _create_fleet(iot: Any, group: str, things: list[str]) -> None:
    iot.create_thing_group(thingGroupName=group)
    for thing in things:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)


async def simulate(devices: int = 1000, minute_s: float = 1.0, device_s: float = 10.0,
                   things_per_client: int = 1,
                   settings: rollout.RolloutSettings | None = None,
                   workdir: Path | None = None, timeout_s: float = 600.0) -> dict[str, Any]:
    """Roll a good model (v2) and then a tampered one (v3) out to ``devices`` simulated
    devices; the figures of each (see the module's docstring)."""
    settings = settings or rollout.RolloutSettings()
    settings.check()
    clients = -(-devices // things_per_client)
    raise_open_files(2 * clients + 1024)  # our clients, and the broker's (it inherits it)
    with tempfile.TemporaryDirectory(prefix="edged-fleet-") as scratch, LocalAws() as aws, \
            LocalBroker(Path(workdir or scratch)) as broker:
        iot, s3, iam = aws.client("iot"), aws.client("s3"), aws.client("iam")
        group = "fleet"
        things = [f"turbine-{n:05d}" for n in range(devices)]
        setup_started = time.monotonic()
        await asyncio.to_thread(_create_fleet, iot, group, things)
        bucket = "edged-fleet-models"
        s3.create_bucket(Bucket=bucket)
        # The light devices never download: any bytes stand for a bundle.
        for version in (GOOD_VERSION, BAD_VERSION):
            s3.put_object(Bucket=bucket, Key=f"windturbine/{version}/bundle.tar.gz",
                          Body=f"bundle v{version}".encode())
        role = iam.create_role(RoleName="edged-presign",
                               AssumeRolePolicyDocument=ROLE_POLICY)["Role"]["Arn"]
        logs: dict[str, DeviceLog] = {}
        executors = [LightExecutor(broker.host, broker.port,
                                   things[i:i + things_per_client],
                                   device_s=device_s * minute_s / 60.0,
                                   tampered={BAD_VERSION}, logs=logs)
                     for i in range(0, devices, things_per_client)]
        for batch in range(0, len(executors), 100):
            await asyncio.gather(*(e.connect() for e in executors[batch:batch + 100]))
        setup_s = time.monotonic() - setup_started
        try:
            async with LocalJobsService(iot, s3, broker.host, broker.port,
                                        minute_s=minute_s) as jobs:
                figures: dict[str, Any] = {}
                for name, version in (("good", GOOD_VERSION), ("bad", BAD_VERSION)):
                    job_id = f"fleet-{name}-v{version}"
                    started = await _roll_out(
                        jobs, iot, s3, job_id=job_id, bucket=bucket,
                        key=f"windturbine/{version}/bundle.tar.gz", version=version,
                        group=group, role=role, settings=settings, timeout_s=timeout_s)
                    report = jobs.report(job_id)
                    log = logs.get(job_id, DeviceLog())
                    # From the first device told to the last one done: the rollout
                    # itself. Before it, the local service reads the job and its group
                    # from moto (``adopt_s``), seconds that AWS does not spend this way.
                    first = min(log.notified.values(), default=started)
                    elapsed = max(log.ended.values(), default=first) - first
                    figures[name] = {
                        "job": job_id, "version": version, "devices": devices,
                        "reached": report["reached"], "states": report["states"],
                        "aborted": report["aborted"], "reason": report["reason"],
                        "adopt_s": round(first - started, 3),
                        "seconds": round(elapsed, 3),
                        "minutes": round(elapsed / minute_s, 2),
                        "real_time_s": round(elapsed * 60.0 / minute_s, 1),
                        # Told to done, per device: device_s compressed plus every
                        # message's trip through this process and the broker.
                        "told_to_done_s": _spread([log.ended[t] - log.notified[t]
                                                   for t in log.ended if t in log.notified]),
                        "notified_per_minute": _minutes_timeline(log, first, minute_s)}
        finally:
            await asyncio.gather(*(e.close() for e in executors), return_exceptions=True)
    return {"devices": devices, "minute_s": minute_s, "compression": round(60.0 / minute_s, 2),
            "device_s": device_s, "things_per_client": things_per_client,
            "mqtt_connections": len(executors), "setup_s": round(setup_s, 1),
            "refused_requests": sum(e.refused for e in executors),
            "settings": settings.job_configs(), **figures}


def text(figures: dict[str, Any]) -> str:
    """The figures for a terminal."""
    good, bad = figures["good"], figures["bad"]
    lines = [
        f"{figures['devices']} simulated devices ({figures['mqtt_connections']} MQTT "
        f"connections), a minute of the rollout rules lasting {figures['minute_s']} s "
        f"({figures['compression']}x faster than real), {figures['device_s']} s of device "
        "work per execution",
        f"good model v{good['version']}: {good['states'].get('SUCCEEDED', 0)} of "
        f"{good['devices']} SUCCEEDED in {good['minutes']} rollout minutes "
        f"(~{good['real_time_s'] / 60:.1f} min in real time); devices told per minute: "
        f"{good['notified_per_minute']}",
        f"tampered model v{bad['version']}: reached {bad['reached']} of {bad['devices']} "
        f"devices before the abort criteria canceled it "
        f"({'aborted: ' + bad['reason'] if bad['aborted'] else 'NOT aborted'}); "
        f"states {bad['states']}",
    ]
    return "\n".join(lines)
