"""``edged-cloud provision`` against a local AWS (moto's server through boto3): the thing,
its certificate and own policy, its group, and a zip whose edged.yaml the real
``edged check-config`` accepts; an existing thing is refused unless --force."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edged.model.bundle.keys import public_pem
from edged_cloud import cli
from tests.support.aws import AwsServer, unique


@pytest.fixture(scope="module")
def aws():
    with AwsServer() as server:
        yield server


@pytest.fixture
def setup(aws, monkeypatch, tmp_path):
    for name, value in aws.environment().items():
        monkeypatch.setenv(name, value)
    key = tmp_path / "release.pub.pem"
    key.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    group = unique("farm")
    aws.client("iot").create_thing_group(thingGroupName=group)
    return {"iot": aws.client("iot"), "key": key, "group": group, "tmp": tmp_path}


def provision(capsys, setup, thing, *extra):
    out = setup["tmp"] / f"{thing}.zip"
    code = cli.main(["provision", thing, "-o", str(out), "--release-key", str(setup["key"]),
                     "--device-dir", str(setup["tmp"] / thing), "--state-dir",
                     str(setup["tmp"] / "state"), "--json", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err, out


def test_a_provisioned_device_gets_its_own_policy_and_a_zip_that_checks(capsys, setup):
    thing = unique("turbine")
    code, out, err, path = provision(capsys, setup, thing, "--group", setup["group"],
                                     "--bucket", "captures-bucket")
    assert code == 0, err
    report = json.loads(out)
    iot = setup["iot"]
    assert iot.describe_thing(thingName=thing)["thingName"] == thing
    [principal] = iot.list_thing_principals(thingName=thing)["principals"]
    assert principal.endswith(report["certificate_id"])
    assert iot.list_attached_policies(target=principal)["policies"][0]["policyName"] == \
        f"edged-{thing}"
    assert thing in iot.list_things_in_thing_group(thingGroupName=setup["group"])["things"]
    policy = json.loads(iot.get_policy(policyName=f"edged-{thing}")["policyDocument"])
    resources = {(s["Action"] if isinstance(s["Action"], str) else ",".join(s["Action"])):
                 s["Resource"] for s in policy["Statement"]}
    assert resources["iot:Connect"].endswith(f":client/{thing}")
    assert all(r.split(":", 5)[5].startswith("topicfilter/")
               for r in resources["iot:Subscribe"])
    assert all(r.split(":", 5)[5].startswith("topic/")
               for r in resources["iot:Publish,iot:Receive"])
    for action in ("iot:Subscribe", "iot:Publish,iot:Receive"):
        # Only this thing's own topics: its name in every one, no wildcard across things.
        assert all(thing in r and "${" not in r and "+" not in r for r in resources[action])
        assert any(f"$aws/things/{thing}/jobs/*" in r for r in resources[action])
        assert any(f"$aws/things/{thing}/shadow/name/edged-health/*" in r
                   for r in resources[action])
    assert resources["iot:AssumeRoleWithCertificate"].endswith(":rolealias/edged-capture")
    assert report["capture_role_policy"]["Statement"][0]["Resource"] == \
        "arn:aws:s3:::captures-bucket/captures/device=${credentials-iot:ThingName}/*"
    with zipfile.ZipFile(path) as archive:
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
        archive.extractall(setup["tmp"] / thing)
    assert modes == {"device.pem.crt": 0o644, "private.pem.key": 0o600,
                     "AmazonRootCA1.pem": 0o644, "trusted-keys/release.pub.pem": 0o644,
                     "edged.yaml": 0o644}
    assert path.stat().st_mode & 0o777 == 0o600
    unpacked = setup["tmp"] / thing
    assert "BEGIN CERTIFICATE" in (unpacked / "device.pem.crt").read_text()
    assert "PRIVATE KEY" in (unpacked / "private.pem.key").read_text()
    if report["root_ca"] == "placeholder":  # no internet here: it says where to get it
        assert "amazontrust.com/repository/AmazonRootCA1.pem" in \
            (unpacked / "AmazonRootCA1.pem").read_text()
    checked = subprocess.run([sys.executable, "-m", "edged", "check-config",
                              str(unpacked / "edged.yaml")], capture_output=True, text=True,
                             timeout=120, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = (unpacked / "edged.yaml").read_text()
    assert f"thing_name: {thing}" in config and report["endpoint"] in config
    assert "bucket: captures-bucket" in config


def test_an_existing_thing_is_refused_unless_forced(capsys, setup):
    thing = unique("turbine")
    code, out, _, path = provision(capsys, setup, thing)
    assert code == 0
    first = json.loads(out)["certificate_id"]
    path.unlink()
    code, out, err, _ = provision(capsys, setup, thing)
    assert code == 1 and f"thing {thing} exists already" in err and "--force" in err
    code, out, err, _ = provision(capsys, setup, thing, "--force")
    assert code == 0, err
    report = json.loads(out)
    assert report["retired_certificates"][0].endswith(first)
    iot = setup["iot"]
    [principal] = iot.list_thing_principals(thingName=thing)["principals"]
    assert principal.endswith(report["certificate_id"])
    assert iot.describe_certificate(certificateId=first)["certificateDescription"][
        "status"] == "INACTIVE"


@pytest.mark.parametrize(("extra", "code", "named"), [
    (["--group", "no-such-group"], 66, "thing group no-such-group does not exist"),
    (["--release-key", "/nonexistent/key.pem"], 66, "--release-key /nonexistent/key.pem"),
])
def test_mistakes_are_named_and_nothing_is_made(capsys, setup, extra, code, named):
    thing = unique("turbine")
    got, out, err, path = provision(capsys, setup, thing, *extra)
    assert got == code and named in err and "Traceback" not in err
    assert not path.exists()
    assert thing not in [t["thingName"] for t in setup["iot"].list_things()["things"]]


def test_a_bad_thing_name_or_key_or_an_existing_zip_is_refused(capsys, setup):
    code, _, err, _ = provision(capsys, setup, "no spaces please")
    assert code == 65 and "is not 1-128 of" in err
    (setup["tmp"] / "not-a-key.pem").write_text("hello")
    code, _, err, _ = provision(capsys, setup, unique("t"), "--release-key",
                                str(setup["tmp"] / "not-a-key.pem"))
    assert code == 65 and "is not a public key in PEM" in err
    thing = unique("turbine")
    (setup["tmp"] / f"{thing}.zip").write_bytes(b"someone else's")
    code, _, err, _ = provision(capsys, setup, thing)
    assert code == 1 and "exists: it may hold another device's key" in err
