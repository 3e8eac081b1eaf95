"""``edged-cloud deploy`` and ``rollout status|cancel`` against a local AWS (moto's server
through boto3): the job AWS IoT gets (document, pre-signed URL placeholder and config,
rollout, abort, timeout, retries), and each mistake a user makes, named."""

from __future__ import annotations

import hashlib
import json
from urllib.parse import unquote

import pytest

from edged.cloud.jobs.document import parse_document
from edged_cloud import cli
from tests.support.aws import AwsServer, unique
from tests.support.jobs_peer import placeholder_url

BUNDLE = b"not really a bundle, but bytes with a hash" * 100
ROLE_POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "iot.amazonaws.com"},
     "Action": "sts:AssumeRole"}]})


@pytest.fixture(scope="module")
def aws():
    with AwsServer() as server:
        yield server


@pytest.fixture
def world(aws, monkeypatch):
    """Two things in a group, a bundle in a bucket, the presign role."""
    for name, value in aws.environment().items():
        monkeypatch.setenv(name, value)
    iot = aws.client("iot")
    things = [unique("turbine"), unique("turbine")]
    group = unique("farm")
    iot.create_thing_group(thingGroupName=group)
    for thing in things:
        iot.create_thing(thingName=thing)
        iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
    bucket = aws.create_bucket()
    key = "bundles/windturbine/v2 final.tar.gz"  # a space: the key is encoded in the URL
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=BUNDLE)
    role = unique("edged-presign")
    aws.client("iam").create_role(RoleName=role, AssumeRolePolicyDocument=ROLE_POLICY)
    return {"iot": iot, "things": things, "group": group, "bucket": bucket, "key": key,
            "role": role}


def edged_cloud(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def deploy(capsys, world, *extra: str) -> tuple[int, str, str]:
    return edged_cloud(capsys, "deploy", "--bundle-url",
                       f"s3://{world['bucket']}/{world['key']}", "--version", "2",
                       "--presign-role", world["role"], *extra)


def test_deploy_creates_the_job_aws_iot_runs(capsys, world):
    job_id = unique("deploy")
    code, out, err = deploy(capsys, world, "--things", ",".join(world["things"]),
                            "--job-id", job_id, "--abort-min-executed", "10", "--json")
    assert code == 0, err
    created = json.loads(out)
    assert created["job"] == job_id
    job = world["iot"].describe_job(jobId=job_id)["job"]
    assert job["presignedUrlConfig"]["expiresInSec"] == 3600
    assert job["presignedUrlConfig"]["roleArn"].endswith(f"role/{world['role']}")
    assert job["jobExecutionsRolloutConfig"] == {"exponentialRate": {
        "baseRatePerMinute": 10, "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 10}}}
    assert job["abortConfig"]["criteriaList"] == [
        {"failureType": kind, "action": "CANCEL", "thresholdPercentage": 10.0,
         "minNumberOfExecutedThings": 10} for kind in ("FAILED", "REJECTED")]
    assert job["timeoutConfig"] == {"inProgressTimeoutInMinutes": 60}
    assert job["jobExecutionsRetryConfig"]["criteriaList"] == [
        {"failureType": "FAILED", "numberOfRetries": 2},
        {"failureType": "TIMED_OUT", "numberOfRetries": 1}]
    assert [t.rsplit("/", 1)[-1] for t in job["targets"]] == world["things"]
    text = world["iot"].get_job_document(jobId=job_id)["document"]
    document = json.loads(text)
    # The placeholder is in AWS's v2 form (the strict peer's check) and names the object.
    url = placeholder_url(document["bundle"]["url"])
    assert url.startswith(f"https://s3.us-east-1.amazonaws.com/{world['bucket']}/")
    assert unquote(url.split("/", 4)[4]) == world["key"]
    assert "v2%20final" in url
    assert document["bundle"]["sha256"] == hashlib.sha256(BUNDLE).hexdigest()
    assert document["bundle"]["size"] == len(BUNDLE)
    assert document["model"] == {"name": "windturbine", "version": 2}
    parsed = parse_document(text)  # what the device accepts
    assert parsed.needs_fresh_url and parsed.options.activate


def test_deploy_to_a_thing_group_and_the_status_of_each_thing(capsys, world):
    job_id = unique("deploy")
    code, _, err = deploy(capsys, world, "--thing-group", world["group"], "--job-id", job_id,
                          "--base-rate", "2", "--increase-after-notified", "4",
                          "--shadow-decisions", "50", "--allow-http")
    assert code == 0, err
    job = world["iot"].describe_job(jobId=job_id)["job"]
    assert job["targets"][0].endswith(f"thinggroup/{world['group']}")
    assert job["jobExecutionsRolloutConfig"]["exponentialRate"]["rateIncreaseCriteria"] == \
        {"numberOfNotifiedThings": 4}
    document = json.loads(world["iot"].get_job_document(jobId=job_id)["document"])
    assert document["options"] == {"activate": True, "shadow_decisions": 50,
                                   "allow_http": True}


def test_status_is_a_table_and_json_and_cancel_cancels(capsys, world):
    job_id = unique("deploy")
    assert deploy(capsys, world, "--things", world["things"][0], "--job-id", job_id)[0] == 0
    code, out, _ = edged_cloud(capsys, "rollout", "status", job_id)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"job {job_id}: ")
    assert lines[1].split() == ["THING", "STATUS", "REASON", "PHASE", "DETAIL", "UPDATED"]
    assert lines[2].split()[:2] == [world["things"][0], "QUEUED"]
    assert lines[-1] == "1 QUEUED"
    code, out, _ = edged_cloud(capsys, "rollout", "status", job_id, "--json")
    report = json.loads(out)
    assert report["states"] == {"QUEUED": 1}
    assert report["executions"][0]["thing"] == world["things"][0]
    code, out, err = edged_cloud(capsys, "rollout", "cancel", job_id, "--comment", "oops")
    assert code == 0, err
    code, out, _ = edged_cloud(capsys, "rollout", "status", job_id, "--json")
    assert json.loads(out)["status"] == "CANCELED"
    assert json.loads(out)["comment"] == "oops"
    code, _, err = edged_cloud(capsys, "rollout", "cancel", job_id)
    assert code == 65 and "CANCELED already" in err


@pytest.mark.parametrize(("change", "code", "named"), [
    (lambda w: ["--things", f"{w['things'][0]},no-such-thing"], 66,
     "thing no-such-thing does not exist"),
    (lambda w: ["--thing-group", "no-such-group"], 66, "thing group no-such-group does not "
                                                        "exist"),
    (lambda w: ["--things", w["things"][0], "--presign-role", "no-such-role"], 66,
     "role no-such-role does not exist"),
    (lambda w: ["--things", w["things"][0], "--bundle-url", f"s3://{w['bucket']}/nope"], 66,
     "no bundle at s3://{bucket}/nope"),
    (lambda w: ["--things", w["things"][0], "--bundle-url", "s3://no-such-bucket-x/k"], 66,
     "bucket no-such-bucket-x does not exist"),
    (lambda w: ["--things", w["things"][0], "--bundle-url", "https://example.com/b"], 65,
     "--bundle-url must be s3://BUCKET/KEY"),
    (lambda w: ["--things", w["things"][0], "--sha256", "0" * 64], 65, "hashes to"),
    (lambda w: ["--things", w["things"][0], "--base-rate", "0"], 65,
     "--base-rate is 0, not 1-1000"),
    (lambda w: ["--things", w["things"][0], "--increment-factor", "9"], 65,
     "--increment-factor is 9.0, not 1.1-5.0"),
    (lambda w: ["--things", w["things"][0], "--abort-on", "FAILED,BROKEN"], 65,
     "BROKEN is not one of"),
    (lambda w: ["--things", w["things"][0], "--retries-failed", "8",
                "--retries-timed-out", "8"], 65, "at most 10"),
    (lambda w: ["--things", w["things"][0], "--job-id", "has spaces"], 65, "invalid jobId"),
    (lambda w: ["--things", w["things"][0], "--model", "wind turbine"], 65,
     "would be refused by the devices: model.name"),
])
def test_a_users_mistake_is_named_and_no_job_is_made(capsys, world, change, code, named):
    before = len(world["iot"].list_jobs()["jobs"])
    got, out, err = deploy(capsys, world, *change(world))
    assert got == code, err
    assert named.format(bucket=world["bucket"]) in err
    assert "Traceback" not in err and not out
    assert len(world["iot"].list_jobs()["jobs"]) == before


def test_a_job_id_taken_and_an_unknown_job_are_named(capsys, world):
    job_id = unique("deploy")
    assert deploy(capsys, world, "--things", world["things"][0], "--job-id", job_id)[0] == 0
    code, _, err = deploy(capsys, world, "--things", world["things"][0], "--job-id", job_id)
    assert code == 65 and f"job {job_id} exists already" in err
    for action in ("status", "cancel"):
        code, _, err = edged_cloud(capsys, "rollout", action, "no-such-job")
        assert code == 66 and "no job no-such-job" in err
