"""The local jobs service: jobs created in moto, carried to devices over the real IoT Jobs
MQTT topics with AWS's rollout and abort rules (tests and the fleet demo; never production).

moto records a job (CreateJob) and its executions but runs nothing: no rollout, no abort
criteria, no device side, and its API has no call through which a device's reported state
reaches its store. This service fills the gap::

    async with LocalJobsService(iot, s3, broker_host, broker_port, minute_s=60):
        ...  # edged-cloud deploy; devices run the job; edged-cloud rollout status reads it

- it reads new jobs through boto3 (ListJobs, DescribeJob, GetJobDocument), expands a thing
  group target into its things (ListThingsInThingGroup; SNAPSHOT: as it is when the job is
  seen);
- it notifies things at the job's rollout rate (``rules.Rate``) by queueing an execution on
  the MQTT side (``mqtt_service.JobsService``, as strict as AWS IoT Core), which pushes
  notify and notify-next to the device;
- it substitutes the pre-signed URL placeholder with a real pre-signed GET from the same S3
  endpoint (``expiresInSec`` of the job's presignedUrlConfig) each time a document goes out;
- after every status a device reports it applies the abort criteria (``rules.abort_reason``):
  when one is met the job is canceled, its QUEUED executions and the things not yet
  notified too;
- it writes each execution's status and statusDetails into moto's own store, so that
  ``edged-cloud rollout status`` reads, through the ordinary boto3 calls
  (ListJobExecutionsForJob, DescribeJobExecution), what the devices really reported. That
  store is moto's in-process backend: **this service must run in the process that runs
  moto's server** (``ThreadedMotoServer``, as the tests and the fleet demo do).

Not done (gaps, on purpose): retries (jobExecutionsRetryConfig), scheduling, CONTINUOUS
targets joining later, job templates, and a job's own document source in S3.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from edged_cloud.local_jobs import rules
from edged_cloud.local_jobs.mqtt_service import Execution, JobsService

POLL_S = 0.1
TERMINAL = ("SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "REMOVED", "CANCELED")


@dataclass
class Rollout:
    """One job as the service runs it."""

    job_id: str
    things: list[str]
    text: str
    rate: rules.Rate
    abort: dict[str, Any] | None
    timeout_minutes: int | None
    expires_s: int
    notified: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)
    aborted: str | None = None
    done: bool = False

    @property
    def reached(self) -> int:
        return len(self.notified)


class MotoStore:
    """Where moto keeps jobs and executions, in this process (see the module's docstring)."""

    def __init__(self, account: str, region: str) -> None:
        from moto.iot.models import iot_backends

        self.backend = iot_backends[account][region]

    def targets(self, job_id: str, thing_arns: dict[str, str]) -> None:
        """One execution per thing (moto keys a group target's as the group itself)."""
        from moto.iot.models import FakeJobExecution

        executions = self.backend.job_executions
        for key in [k for k in executions if k[0] == job_id and k[1] not in thing_arns]:
            del executions[key]
        for thing, arn in thing_arns.items():
            if (job_id, thing) not in executions:
                executions[(job_id, thing)] = FakeJobExecution(job_id, arn)

    def execution(self, job_id: str, thing: str, status: str,
                  details: dict[str, str] | None = None, version: int | None = None) -> None:
        from moto.core.utils import utcnow

        found = self.backend.job_executions.get((job_id, thing))
        if found is None:
            return
        found.status = status
        if details is not None:
            found.status_details_map = dict(details)
        if version is not None:
            found.version_number = version
        found.last_updated_at = utcnow()

    def job(self, job_id: str, status: str, reason_code: str | None = None,
            comment: str | None = None) -> None:
        job = self.backend.jobs.get(job_id)
        if job is None:
            return
        job.status = status
        if reason_code is not None:
            job.reason_code = reason_code
        if comment is not None:
            job.comment = comment


class LocalJobsService:
    """See the module's docstring. ``iot`` and ``s3`` are boto3 clients of the moto server;
    ``minute_s`` is how long a minute of the rollout rate and of timers lasts; ``account``
    is moto's (its default account unless the server was told another)."""

    def __init__(self, iot: Any, s3: Any, host: str, port: int, *, minute_s: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 account: str = "123456789012") -> None:
        self.iot = iot
        self.s3 = s3
        self.minute_s = minute_s
        self.clock = clock
        self.store = MotoStore(account, iot.meta.region_name)
        self.rollouts: dict[str, Rollout] = {}
        self.mqtt = JobsService(host, port, presign=self._presign, clock=clock,
                                minute_s=minute_s, on_change=self._changed)
        self._task: asyncio.Task | None = None
        self._expires_s = 3600

    async def __aenter__(self) -> LocalJobsService:
        await self.mqtt.__aenter__()
        self._task = asyncio.create_task(self._run(), name="edged-local-jobs.rollouts")
        return self

    async def __aexit__(self, *exc: object) -> None:
        from edged.testing import stop_task

        if self._task is not None:
            await stop_task(self._task)
        await self.mqtt.__aexit__(*exc)

    # -- what moto holds ----------------------------------------------------------------

    def _things(self, targets: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for arn in targets:
            kind, name = arn.rsplit(":", 1)[-1].split("/", 1)
            if kind == "thinggroup":
                pages = self.iot.get_paginator("list_things_in_thing_group").paginate(
                    thingGroupName=name)
                for thing in (t for page in pages for t in page["things"]):
                    found[thing] = self.iot.describe_thing(thingName=thing)["thingArn"]
            else:
                found[name] = arn
        return found

    def _adopt(self, job_id: str) -> Rollout:
        job = self.iot.describe_job(jobId=job_id)["job"]
        text = self.iot.get_job_document(jobId=job_id)["document"]
        things = self._things(job.get("targets") or [])
        self.store.targets(job_id, things)
        timeout = (job.get("timeoutConfig") or {}).get("inProgressTimeoutInMinutes")
        expires = (job.get("presignedUrlConfig") or {}).get("expiresInSec") or 3600
        return Rollout(job_id, sorted(things), text,
                       rules.Rate(job.get("jobExecutionsRolloutConfig"), self.minute_s),
                       job.get("abortConfig"), timeout, expires)

    # -- the loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            jobs = await asyncio.to_thread(lambda: self.iot.list_jobs()["jobs"])
            for summary in jobs:
                job_id = summary["jobId"]
                if job_id not in self.rollouts and summary["status"] in ("QUEUED",
                                                                           "IN_PROGRESS"):
                    self.rollouts[job_id] = await asyncio.to_thread(self._adopt, job_id)
                rollout = self.rollouts.get(job_id)
                if rollout is None or rollout.done:
                    continue
                if summary["status"] == "CANCELED" and rollout.aborted is None:
                    await self._cancel(rollout, None)  # canceled by its user
                else:
                    await self._step(rollout)
            await asyncio.sleep(POLL_S)

    async def _step(self, rollout: Rollout) -> None:
        if rollout.aborted is None:
            reason = rules.abort_reason(rollout.abort, list(rollout.statuses.values()))
            if reason is not None:
                await self._cancel(rollout, reason)
                return
        waiting = [t for t in rollout.things if t not in rollout.notified]
        if waiting:
            succeeded = sum(1 for s in rollout.statuses.values() if s == "SUCCEEDED")
            allowed = rollout.rate.allowed(self.clock(), len(rollout.notified), succeeded)
            for thing in waiting[:allowed]:
                self._expires_s = rollout.expires_s
                await self.mqtt.queue_job(thing, rollout.job_id, rollout.text,
                                          in_progress_timeout_minutes=rollout.timeout_minutes)
                rollout.notified.append(thing)
                rollout.statuses[thing] = "QUEUED"
                rollout.rate.sent(1)
        elif all(s in TERMINAL for s in rollout.statuses.values()):
            rollout.done = True
            self.store.job(rollout.job_id, "COMPLETED")

    async def _cancel(self, rollout: Rollout, reason: str | None) -> None:
        """Cancel what has not started, as AWS does for an abort or a user's cancel."""
        rollout.aborted = reason or "canceled"
        rollout.done = True
        for thing in rollout.notified:
            if rollout.statuses.get(thing) == "QUEUED":
                await self.mqtt.cancel(thing, rollout.job_id)
        for thing in rollout.things:
            if thing not in rollout.notified:
                rollout.statuses[thing] = "CANCELED"
                self.store.execution(rollout.job_id, thing, "CANCELED")
        if reason is not None:
            self.store.job(rollout.job_id, "CANCELED", "edged_local_jobs_abort",
                           f"abort criteria met: {reason}")

    # -- what the devices do --------------------------------------------------------------

    def _changed(self, execution: Execution) -> None:
        rollout = self.rollouts.get(execution.job_id)
        if rollout is not None:
            rollout.statuses[execution.thing] = execution.status
        self.store.execution(execution.job_id, execution.thing, execution.status,
                             execution.status_details, execution.version_number)

    def _presign(self, s3_url: str) -> str:
        """A pre-signed GET of the object the placeholder names, from our S3 endpoint."""
        path = unquote(urlsplit(s3_url).path.lstrip("/"))
        bucket, key = path.split("/", 1)
        return self.s3.generate_presigned_url("get_object",
                                              Params={"Bucket": bucket, "Key": key},
                                              ExpiresIn=self._expires_s)

    def report(self, job_id: str) -> dict[str, Any]:
        """What the service did with a job: things reached, states, why it stopped."""
        rollout = self.rollouts[job_id]
        states: dict[str, int] = {}
        for status in rollout.statuses.values():
            states[status] = states.get(status, 0) + 1
        return {"job": job_id, "things": len(rollout.things), "reached": rollout.reached,
                "aborted": rollout.aborted is not None and rollout.aborted != "canceled",
                "reason": rollout.aborted, "states": states}

