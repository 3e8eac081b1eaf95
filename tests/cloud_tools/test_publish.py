"""``edged-cloud publish`` against a local S3 (moto's server through boto3): the key layout,
the hash checked after upload, the same bytes twice a no-op, a different bundle under a
published version refused, a missing bucket and refused credentials named."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest

from edged_cloud import cli
from edged_cloud.publish import Progress, bundle_key
from tests.support.aws import AwsServer


@pytest.fixture(scope="module")
def aws():
    with AwsServer() as server:
        yield server


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two different signed bundles of windturbine version 2, and one of version 3."""
    root = tmp_path_factory.mktemp("bundles")
    assert cli.main(["keys", "create", "--dir", str(root / "keys")]) == 0
    made = {}
    for label, version, golden in (("v2", 2, 16), ("v2-other", 2, 8), ("v3", 3, 16)):
        made[label] = root / f"{label}.tar.gz"
        assert cli.main(["package", "builtin:windturbine-v1", "-o", str(made[label]),
                         "--key", str(root / "keys"), "--version", str(version),
                         "--golden", str(golden)]) == 0
    return made


@pytest.fixture
def env(aws, monkeypatch):
    for name, value in aws.environment().items():
        monkeypatch.setenv(name, value)
    return aws


def publish(capsys, bundle, bucket, *extra):
    code = cli.main(["publish", str(bundle), "--bucket", bucket, "--json", *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_the_bundle_lands_under_name_and_version_with_its_hash(env, bundles, capsys):
    bucket = env.create_bucket()
    code, result, err = publish(capsys, bundles["v2"], bucket)
    assert code == 0, err
    data = bundles["v2"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert result["key"] == "models/windturbine/2/bundle.tar.gz" == bundle_key("models",
                                                                               "windturbine", 2)
    assert result["uploaded"] is True and result["sha256"] == digest
    s3 = env.client("s3")
    head = s3.head_object(Bucket=bucket, Key=result["key"], ChecksumMode="ENABLED")
    assert head["Metadata"]["sha256"] == digest
    assert head["Metadata"]["model-version"] == "2"
    assert head["Metadata"]["key-id"] == result["key_id"]
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(digest)).decode()
    assert result["checked_by"] == "ChecksumSHA256"
    assert s3.get_object(Bucket=bucket, Key=result["key"])["Body"].read() == data


def test_the_same_bytes_again_is_a_no_op_that_says_so(env, bundles, capsys):
    bucket = env.create_bucket()
    assert publish(capsys, bundles["v2"], bucket)[0] == 0
    before = env.client("s3").head_object(Bucket=bucket,
                                           Key="models/windturbine/2/bundle.tar.gz")
    code = cli.main(["publish", str(bundles["v2"]), "--bucket", bucket])
    out = capsys.readouterr().out
    assert code == 0
    assert "already holds this bundle" in out and "nothing to upload" in out
    after = env.client("s3").head_object(Bucket=bucket,
                                          Key="models/windturbine/2/bundle.tar.gz")
    assert after["LastModified"] == before["LastModified"]
    assert after["ETag"] == before["ETag"]


def test_a_different_bundle_under_a_published_version_is_refused(env, bundles, capsys):
    bucket = env.create_bucket()
    assert publish(capsys, bundles["v2"], bucket)[0] == 0
    code, _, err = publish(capsys, bundles["v2-other"], bucket)
    assert code == 1
    assert "holds a different bundle" in err and "new --version" in err
    body = env.client("s3").get_object(Bucket=bucket,
                                        Key="models/windturbine/2/bundle.tar.gz")["Body"]
    assert body.read() == bundles["v2"].read_bytes()  # not overwritten
    code, result, err = publish(capsys, bundles["v3"], bucket)
    assert code == 0, err
    assert result["key"] == "models/windturbine/3/bundle.tar.gz"


def test_a_prefix_is_part_of_the_key(env, bundles, capsys):
    bucket = env.create_bucket()
    code, result, _ = publish(capsys, bundles["v2"], bucket, "--prefix", "/fleet/a/")
    assert code == 0
    assert result["key"] == "fleet/a/windturbine/2/bundle.tar.gz"
    assert list(env.objects(bucket)) == ["fleet/a/windturbine/2/bundle.tar.gz"]


def test_a_missing_bucket_is_named(env, bundles, capsys):
    code, _, err = publish(capsys, bundles["v2"], "no-such-bucket-edged")
    assert code == 66
    assert "bucket 'no-such-bucket-edged' does not exist" in err
    assert "Traceback" not in err


def test_an_endpoint_that_does_not_answer_is_an_error_not_a_traceback(env, bundles, capsys,
                                                                      monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = env.create_bucket()
    env.stop()
    try:
        code, _, err = publish(capsys, bundles["v2"], bucket)
    finally:
        env.start()
    assert code == 1
    assert "Could not connect" in err and "Traceback" not in err


def test_refused_credentials_are_named(env, bundles, capsys, monkeypatch):
    """moto checks credentials once its IAM enforcement is on: an unknown access key is
    refused as AWS refuses it (InvalidAccessKeyId)."""
    from moto import settings

    bucket = env.create_bucket()
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEDGEDNOSUCHKEY00")
    code, _, err = publish(capsys, bundles["v2"], bucket)
    assert code == 1
    assert "refused the credentials" in err and "Traceback" not in err


def test_not_a_bundle_is_refused_before_any_upload(env, tmp_path, capsys):
    bucket = env.create_bucket()
    fake = tmp_path / "bundle.tar.gz"
    fake.write_bytes(b"not gzip at all")
    code, _, err = publish(capsys, fake, bucket)
    assert code == 65
    assert "not a signed model bundle" in err
    assert env.objects(bucket) == {}
    code, _, err = publish(capsys, tmp_path / "absent.tar.gz", bucket)
    assert code == 66


def test_the_progress_bar_reaches_the_whole_size():
    stream = io.StringIO()
    progress = Progress(3_000_000, "uploading x", stream, enabled=True)
    for _ in range(3):
        progress(1_000_000)
    progress.close()
    assert progress.done == 3_000_000
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert "100.0%" in last and "3.0/3.0 MB" in last
    quiet = io.StringIO()
    Progress(10, "x", quiet, enabled=False)(10)
    assert quiet.getvalue() == ""


def test_a_multipart_upload_is_read_back_to_check_it(env, tmp_path, capsys, monkeypatch):
    """S3 keeps only a checksum of the parts' checksums for a multipart upload: the bytes
    are read back and hashed instead."""
    import shutil

    from edged.model.bundle import build_bundle, load_private_key
    from edged.model.package import builtin_root
    from edged_cloud import publish as publishing

    model = tmp_path / "model"
    shutil.copytree(builtin_root() / "windturbine-v1", model)
    (model / "extra.bin").write_bytes(np.random.default_rng(1).bytes(6 << 20))
    keys = tmp_path / "keys"
    assert cli.main(["keys", "create", "--dir", str(keys), "--json"]) == 0
    kid = json.loads(capsys.readouterr().out)["created"]
    bundle = build_bundle(model, tmp_path / "big.tar.gz",
                          load_private_key(keys / f"{kid}.key.pem"))
    monkeypatch.setattr(publishing, "PART_BYTES", 5 << 20)  # S3's smallest part
    bucket = env.create_bucket()
    code, result, err = publish(capsys, bundle, bucket)
    assert code == 0, err
    assert result["checked_by"] == "read back"
    head = env.client("s3").head_object(Bucket=bucket, Key=result["key"], ChecksumMode="ENABLED")
    assert head["ContentLength"] == bundle.stat().st_size > 5 << 20
    # Why it is read back: S3's checksum here is of the parts, not of the file.
    whole = base64.b64encode(hashlib.sha256(bundle.read_bytes()).digest()).decode()
    assert head.get("ChecksumSHA256") != whole
