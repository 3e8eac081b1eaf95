"""The local jobs service between moto and real ``edged run`` daemons on mosquitto: a good
rollout reaches every device, which report SUCCEEDED (read back with ``rollout status``);
a release the devices refuse is REJECTED and the abort criteria cancel it before it
reaches them all. And AWS's rollout and abort rules on their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle import build_bundle
from edged.testing import eventually, farm_config
from edged_cloud import cli
from edged_cloud.local_jobs import rules
from edged_cloud.local_jobs.service import LocalJobsService
from tests.cloud.jobs.conftest import BUILTIN, CLOUD, trust_key
from tests.support import EdgedProcess, Mosquitto
from tests.support.aws import AwsServer, unique

ROOT = Path(__file__).resolve().parents[2]
ROLE = json.dumps({"Version": "2012-10-17", "Statement": []})


def test_the_rate_grows_by_its_factor_after_each_criteria_step():
    rate = rules.Rate({"exponentialRate": {
        "baseRatePerMinute": 2, "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfNotifiedThings": 2}},
        "maximumPerMinute": 5}, minute_s=60)
    assert rate.allowed(0, 0, 0) == 2
    rate.sent(2)
    assert rate.allowed(1, 2, 0) == 2  # rate 4 now, 2 sent this minute
    rate.sent(2)
    assert rate.allowed(2, 4, 0) == 1  # 8, capped at 5
    assert rate.allowed(61, 4, 0) == 5  # a new minute
    assert rules.Rate(None).allowed(0, 0, 0) == rules.UNLIMITED


def test_abort_criteria_count_each_type_on_its_own_after_a_minimum():
    config = {"criteriaList": [
        {"failureType": kind, "action": "CANCEL", "thresholdPercentage": 10.0,
         "minNumberOfExecutedThings": 10} for kind in ("FAILED", "REJECTED")]}
    assert rules.abort_reason(config, ["REJECTED"] * 9) is None  # under the minimum
    assert rules.abort_reason(config, ["SUCCEEDED"] * 9 + ["REJECTED", "QUEUED"]) == \
        "1 of 10 executions ended REJECTED (10 % >= 10.0 %)"
    assert rules.abort_reason(config, ["SUCCEEDED"] * 18 + ["FAILED", "REJECTED"]) is None
    assert rules.abort_reason({"criteriaList": [
        {"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10.0,
         "minNumberOfExecutedThings": 10}]},
        ["SUCCEEDED"] * 18 + ["FAILED", "TIMED_OUT"]) is not None


def edged_cloud(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return code, out


def bundle(tmp: Path, version: int, key: Ed25519PrivateKey) -> bytes:
    import shutil

    target = tmp / f"model-v{version}"
    shutil.copytree(BUILTIN, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    (target / "manifest.json").write_text(json.dumps(manifest))
    return build_bundle(target, tmp / f"v{version}.tar.gz", key).read_bytes()


@pytest.mark.timeout(240)
async def test_a_rollout_reaches_real_daemons_and_a_refused_one_is_aborted(
        tmp_path, monkeypatch, capsys):
    release, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys_dir = tmp_path / "trusted"
    trust_key(keys_dir, release, "release")
    with AwsServer() as aws, Mosquitto(tmp_path) as broker:
        for name, value in aws.environment().items():
            monkeypatch.setenv(name, value)
        iot, s3 = aws.client("iot"), aws.client("s3")
        group = unique("farm")
        iot.create_thing_group(thingGroupName=group)
        things = [unique("gw") for _ in range(3)]
        for thing in things:
            iot.create_thing(thingName=thing)
            iot.add_thing_to_thing_group(thingGroupName=group, thingName=thing)
        bucket = aws.create_bucket()
        s3.put_object(Bucket=bucket, Key="v2.tar.gz", Body=bundle(tmp_path, 2, release))
        # Signed by a key no device trusts: every device refuses it (REJECTED unknown_key).
        s3.put_object(Bucket=bucket, Key="v3.tar.gz", Body=bundle(tmp_path, 3, stranger))
        aws.client("iam").create_role(RoleName="presign", AssumeRolePolicyDocument=ROLE)
        cloud = CLOUD.format(
            broker=f"{{host: 127.0.0.1, port: {broker.port}, reconnect_min_s: 0.1, "
                   "reconnect_max_s: 0.5}", trust=f"{{keys_dir: {keys_dir}}}", jobs="")
        configs = []
        for thing in things:
            path = tmp_path / f"{thing}.yaml"
            path.write_text(farm_config(thing, tmp_path / thing, turbines=2,
                                        model="store:windturbine", interval_s=0.5,
                                        extra=cloud))
            configs.append(path)
        common = ["--thing-group", group, "--presign-role", "presign", "--allow-http"]
        # A minute of the rollout lasts 30 s: the bad rollout notifies one thing a minute.
        async with LocalJobsService(iot, s3, broker.host, broker.port, minute_s=30) as jobs:
            daemons = [EdgedProcess(config, cwd=ROOT) for config in configs]
            try:
                for daemon in daemons:
                    daemon.__enter__()
                edged_cloud(capsys, "deploy", "--bundle-url", f"s3://{bucket}/v2.tar.gz",
                            "--version", "2", "--job-id", "good", "--base-rate", "1000",
                            *common)
                await eventually(lambda: jobs.rollouts.get("good") is not None and
                                 jobs.rollouts["good"].done, 120)
                _, out = edged_cloud(capsys, "rollout", "status", "good", "--json")
                good = json.loads(out)
                assert good["states"] == {"SUCCEEDED": 3}, good
                assert good["status"] == "COMPLETED"
                assert {e["thing"] for e in good["executions"]} == set(things)
                assert all(e["status_details"].get("version") == "2"
                           for e in good["executions"]), good

                edged_cloud(capsys, "deploy", "--bundle-url", f"s3://{bucket}/v3.tar.gz",
                            "--version", "3", "--job-id", "bad", "--base-rate", "1",
                            "--increase-after-notified", "5", "--abort-on", "REJECTED",
                            "--abort-threshold", "50", "--abort-min-executed", "1", *common)
                await eventually(lambda: jobs.rollouts.get("bad") is not None and
                                 jobs.rollouts["bad"].done, 120)
                report = jobs.report("bad")
                _, out = edged_cloud(capsys, "rollout", "status", "bad", "--json")
                bad = json.loads(out)
                _, table = edged_cloud(capsys, "rollout", "status", "bad")
            finally:
                for daemon in daemons:
                    daemon.__exit__(None, None, None)
    assert report["aborted"] and report["reached"] == 1, report
    assert bad["status"] == "CANCELED" and "abort criteria met" in bad["comment"], bad
    assert bad["states"] == {"REJECTED": 1, "CANCELED": 2}, bad
    [refused] = [e for e in bad["executions"] if e["status"] == "REJECTED"]
    assert refused["status_details"].get("reason") == "unknown_key", refused
    assert "unknown_key" in table and "REJECTED" in table
