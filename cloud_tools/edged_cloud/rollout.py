"""Roll a published bundle out as an AWS IoT job, and read how the rollout goes.

``deploy`` creates the job: the ``edged.deploy-model`` document (validated by the device's
own parser, ``edged.cloud.jobs.document``) whose bundle URL is AWS's pre-signed URL
placeholder in its v2 form, the ``presignedUrlConfig`` that lets IoT sign it, an
exponential rollout, abort criteria, an in-progress timeout and retries. ``status`` reads
every execution's state and the device's ``statusDetails`` (``reason``, ``phase``...);
``cancel`` cancels the job. Each checks what a user can get wrong first (a thing, group,
role, bucket, object or job that does not exist) and names it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from edged.cloud.jobs.document import OPERATION, parse_document
from edged.cloud.jobs.protocol import JobDocumentError, JobsProtocolError, check_job_id
from edged_cloud.aws import call
from edged_cloud.errors import BadInput, NotFound

#: AWS's ranges (CreateJob's API reference).
BASE_RATE = (1, 1000)
INCREMENT_FACTOR = (1.1, 5.0)
EXPIRES_S = (60, 3600)
TIMEOUT_MINUTES = (1, 10_080)
MAX_RETRIES = 10
FAILURE_TYPES = ("FAILED", "REJECTED", "TIMED_OUT", "ALL")
#: Statuses in the order the status table counts them.
STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT",
            "REMOVED", "CANCELED")


@dataclass(frozen=True)
class RolloutSettings:
    """How fast a job reaches things, when it gives up, how long and how often it tries."""

    base_rate_per_minute: int = 10
    increment_factor: float = 2.0
    #: Raise the rate after this many things were notified, or succeeded (exactly one).
    increase_after_notified: int | None = None
    increase_after_succeeded: int | None = 10
    maximum_per_minute: int | None = None
    abort_on: tuple[str, ...] = ("FAILED", "REJECTED")
    abort_threshold_percent: float = 10.0
    abort_min_executed: int = 10
    in_progress_timeout_minutes: int = 60
    retries_failed: int = 2
    retries_timed_out: int = 1

    def check(self) -> None:
        _within("--base-rate", self.base_rate_per_minute, BASE_RATE)
        _within("--increment-factor", self.increment_factor, INCREMENT_FACTOR)
        if (self.increase_after_notified is None) == (self.increase_after_succeeded is None):
            raise BadInput("give one of --increase-after-notified and "
                           "--increase-after-succeeded")
        for name, value in (("--increase-after-notified", self.increase_after_notified),
                            ("--increase-after-succeeded", self.increase_after_succeeded)):
            if value is not None:
                _within(name, value, (1, 10**9))
        if self.maximum_per_minute is not None:
            _within("--max-rate", self.maximum_per_minute, (self.base_rate_per_minute, 1000))
        unknown = sorted(set(self.abort_on) - set(FAILURE_TYPES))
        if unknown:
            raise BadInput(f"--abort-on: {', '.join(unknown)} is not one of "
                           f"{', '.join(FAILURE_TYPES)}")
        _within("--abort-threshold", self.abort_threshold_percent, (0.0, 100.0))
        _within("--abort-min-executed", self.abort_min_executed, (1, 10**9))
        _within("--in-progress-timeout", self.in_progress_timeout_minutes, TIMEOUT_MINUTES)
        _within("--retries-failed", self.retries_failed, (0, MAX_RETRIES))
        _within("--retries-timed-out", self.retries_timed_out, (0, MAX_RETRIES))
        if self.retries_failed + self.retries_timed_out > MAX_RETRIES:
            raise BadInput(f"--retries-failed and --retries-timed-out add up to at most "
                           f"{MAX_RETRIES} (AWS's limit)")

    def job_configs(self) -> dict[str, Any]:
        """CreateJob's rollout, abort, timeout and retry arguments."""
        criteria = ({"numberOfNotifiedThings": self.increase_after_notified}
                    if self.increase_after_notified is not None else
                    {"numberOfSucceededThings": self.increase_after_succeeded})
        exponential = {"baseRatePerMinute": self.base_rate_per_minute,
                       "incrementFactor": self.increment_factor,
                       "rateIncreaseCriteria": criteria}
        rollout: dict[str, Any] = {"exponentialRate": exponential}
        if self.maximum_per_minute is not None:
            rollout["maximumPerMinute"] = self.maximum_per_minute
        # AWS weighs each criterion on its own: 10 % FAILED aborts, 5 % FAILED and 5 %
        # REJECTED do not (ALL counts them together, TIMED_OUT too).
        abort = {"criteriaList": [
            {"failureType": kind, "action": "CANCEL",
             "thresholdPercentage": self.abort_threshold_percent,
             "minNumberOfExecutedThings": self.abort_min_executed}
            for kind in self.abort_on]}
        retries = [{"failureType": kind, "numberOfRetries": count}
                   for kind, count in (("FAILED", self.retries_failed),
                                       ("TIMED_OUT", self.retries_timed_out)) if count]
        configs = {"jobExecutionsRolloutConfig": rollout,
                   "timeoutConfig": {
                       "inProgressTimeoutInMinutes": self.in_progress_timeout_minutes}}
        if abort["criteriaList"]:
            configs["abortConfig"] = abort
        if retries:
            configs["jobExecutionsRetryConfig"] = {"criteriaList": retries}
        return configs


def _within(name: str, value: float, bounds: tuple[float, float]) -> None:
    low, high = bounds
    if not low <= value <= high:
        raise BadInput(f"{name} is {value}, not {low}-{high}")


@dataclass(frozen=True)
class Bundle:
    """Where the bundle is in S3 and what the device must find in it."""

    bucket: str
    key: str
    sha256: str
    size: int


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, key)`` of ``s3://bucket/key``."""
    if not url.startswith("s3://") or "/" not in url[5:] or url.endswith("/"):
        raise BadInput(f"--bundle-url must be s3://BUCKET/KEY, not {url!r}")
    bucket, key = url[5:].split("/", 1)
    if not bucket:
        raise BadInput(f"--bundle-url has no bucket: {url!r}")
    return bucket, key


def placeholder(region: str, bucket: str, key: str) -> str:
    """AWS's v2 pre-signed URL placeholder for the object: the key alone URL-encoded, as
    the S3 SDK encodes it (all but ``A-Za-z0-9-_.~/``)."""
    return (f"${{aws:iot:s3-presigned-url-v2:https://s3.{region}.amazonaws.com/{bucket}/"
            f"{quote(key, safe='/-_.~')}}}")


def bundle_in_s3(s3: Any, bucket: str, key: str, sha256: str | None = None) -> Bundle:
    """The object's size and SHA-256, read from S3 (the bytes the devices will fetch); a
    ``sha256`` given must match them."""
    call(f"reading bucket {bucket}", s3.head_bucket, Bucket=bucket,
         missing=f"bucket {bucket} does not exist (or is not yours)")
    found = call(f"reading s3://{bucket}/{key}", s3.get_object, Bucket=bucket, Key=key,
                 missing=f"no bundle at s3://{bucket}/{key} (edged-cloud publish puts it "
                         "there)")
    digest = hashlib.sha256()
    size = 0
    for chunk in found["Body"].iter_chunks(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    if size == 0:
        raise BadInput(f"s3://{bucket}/{key} is empty")
    if sha256 is not None and sha256.lower() != digest.hexdigest():
        raise BadInput(f"s3://{bucket}/{key} hashes to {digest.hexdigest()}, not the "
                       f"--sha256 {sha256}")
    return Bundle(bucket, key, digest.hexdigest(), size)


def thing_arns(iot: Any, things: list[str]) -> list[str]:
    """Each thing's ARN; a thing that does not exist is named."""
    arns = []
    for thing in things:
        found = call(f"reading thing {thing}", iot.describe_thing, thingName=thing,
                     missing=f"thing {thing} does not exist (edged-cloud provision "
                             "creates it)")
        arns.append(found["thingArn"])
    return arns


def group_arn(iot: Any, group: str) -> str:
    found = call(f"reading thing group {group}", iot.describe_thing_group,
                 thingGroupName=group, missing=f"thing group {group} does not exist")
    return found["thingGroupArn"]


def role_arn(iam: Any, role: str) -> str:
    """The ARN of ``role`` (a name or an ARN), which must exist: IoT signs the bundle URL
    with it."""
    name = role.rsplit("/", 1)[-1] if role.startswith("arn:") else role
    found = call(f"reading role {name}", iam.get_role, RoleName=name,
                 missing=f"role {name} does not exist: --presign-role names the IAM role "
                         "that lets AWS IoT read the bundle (s3:GetObject)")
    return found["Role"]["Arn"]


def job_document(bundle: Bundle, region: str, model: str, version: int, *,
                 activate: bool = True, shadow_decisions: int = 0,
                 allow_http: bool = False) -> dict[str, Any]:
    """The ``edged.deploy-model`` document, checked by the device's own parser."""
    document = {"operation": OPERATION,
                "bundle": {"url": placeholder(region, bundle.bucket, bundle.key),
                           "sha256": bundle.sha256, "size": bundle.size},
                "model": {"name": model, "version": version},
                "options": {"activate": activate, "shadow_decisions": shadow_decisions,
                            **({"allow_http": True} if allow_http else {})}}
    try:
        parse_document(json.dumps(document))
    except JobDocumentError as exc:
        raise BadInput(f"the job document would be refused by the devices: "
                       f"{exc.detail}") from None
    return document


def default_job_id(model: str, version: int) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return check_job_id(f"{model.replace('.', '_')}-v{version}-{stamp}"[-64:])


@dataclass
class Deployment:
    """What ``deploy`` asks of AWS IoT."""

    job_id: str
    targets: list[str]
    document: dict[str, Any]
    role_arn: str
    expires_s: int = 3600
    settings: RolloutSettings = field(default_factory=RolloutSettings)
    continuous: bool = False
    description: str = ""

    def create_job_arguments(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "targets": self.targets,
                "document": json.dumps(self.document),
                "description": self.description or
                f"edged: {self.document['model']['name']} "
                f"v{self.document['model']['version']}",
                "targetSelection": "CONTINUOUS" if self.continuous else "SNAPSHOT",
                "presignedUrlConfig": {"roleArn": self.role_arn,
                                       "expiresInSec": self.expires_s},
                **self.settings.job_configs()}


def create(iot: Any, deployment: Deployment) -> dict[str, Any]:
    """Create the job; an id already taken is named."""
    try:
        check_job_id(deployment.job_id)
    except JobsProtocolError as exc:
        raise BadInput(f"--job-id: {exc}") from None
    _within("--url-expires-s", deployment.expires_s, EXPIRES_S)
    deployment.settings.check()
    if job_exists(iot, deployment.job_id):
        raise BadInput(f"job {deployment.job_id} exists already: choose another --job-id")
    created = call(f"creating job {deployment.job_id}", iot.create_job,
                   **deployment.create_job_arguments())
    return {"job": created["jobId"], "arn": created["jobArn"],
            "targets": deployment.targets, "document": deployment.document}


def job_exists(iot: Any, job_id: str) -> bool:
    try:
        _job(iot, job_id)
    except NotFound:
        return False
    return True


def _job(iot: Any, job_id: str) -> dict[str, Any]:
    return call(f"reading job {job_id}", iot.describe_job, jobId=job_id,
                missing=f"no job {job_id} (edged-cloud deploy prints the ids it creates)"
                )["job"]


def status(iot: Any, job_id: str) -> dict[str, Any]:
    """The job's status and every execution's: thing, status, statusDetails."""
    job = _job(iot, job_id)
    summaries: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = call(f"listing the executions of {job_id}", iot.list_job_executions_for_job,
                    jobId=job_id, **({"nextToken": token} if token else {}))
        summaries.extend(page.get("executionSummaries", []))
        token = page.get("nextToken")
        if not token:
            break
    executions = []
    for summary in summaries:
        thing = summary["thingArn"].rsplit("/", 1)[-1]
        found = call(f"reading the execution of {job_id} on {thing}",
                     iot.describe_job_execution, jobId=job_id, thingName=thing,
                     missing=f"the execution of {job_id} on {thing} is gone")["execution"]
        updated = found.get("lastUpdatedAt")
        executions.append({
            "thing": thing, "status": found["status"],
            "status_details": found.get("statusDetails", {}).get("detailsMap", {}) or {},
            "last_updated": updated.isoformat() if hasattr(updated, "isoformat") else updated,
        })
    executions.sort(key=lambda e: e["thing"])
    counts = {s: n for s in STATUSES
              if (n := sum(1 for e in executions if e["status"] == s))}
    return {"job": job_id, "status": job.get("status"), "reason_code": job.get("reasonCode"),
            "comment": job.get("comment"), "states": counts, "executions": executions}


def cancel(iot: Any, job_id: str, *, force: bool = False, comment: str | None = None
           ) -> dict[str, Any]:
    """Cancel the job: QUEUED executions are canceled; IN_PROGRESS ones too with ``force``
    (the device may be half-way through an install: it is told its job is gone)."""
    job = _job(iot, job_id)
    if job.get("status") in ("CANCELED", "COMPLETED", "DELETION_IN_PROGRESS"):
        raise BadInput(f"job {job_id} is {job['status']} already")
    call(f"canceling job {job_id}", iot.cancel_job, jobId=job_id,
         reasonCode="edged-cloud_cancel", force=force,
         **({"comment": comment} if comment else {}))
    return {"job": job_id, "status": "CANCELED", "force": force}


def table(report: dict[str, Any]) -> str:
    """``status``'s report as a table for a terminal."""
    rows = [("THING", "STATUS", "REASON", "PHASE", "DETAIL", "UPDATED")]
    for e in report["executions"]:
        details = e["status_details"]
        rest = ", ".join(f"{k}={v}" for k, v in sorted(details.items())
                         if k not in ("reason", "phase"))
        rows.append((e["thing"], e["status"], details.get("reason", ""),
                     details.get("phase", ""), rest[:60], str(e["last_updated"] or "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"job {report['job']}: {report['status']}"
             + (f" ({report['reason_code']})" if report.get("reason_code") else "")
             + (f" - {report['comment']}" if report.get("comment") else "")]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines.append(", ".join(f"{n} {s}" for s, n in report["states"].items()) or
                 "no executions")
    return "\n".join(lines)
