"""edged-cloud train --sagemaker against moto's server (S3, IAM, SageMaker on one port).

moto records a training job and reports it Completed but runs nothing: what is tested is
what is real here: the request the job is created with, the dataset uploaded where the
job reads it, a missing role or bucket named before any job, and fetching the artifact
placed where the job says it is."""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest

from edged_cloud.cli import main
from tests.support.servers import S3Server

ROLE = "edged-training"


@pytest.fixture(scope="module")
def aws():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in S3Server.CREDENTIALS.items():
            patch.setenv(name, value)
        with S3Server() as server:
            iam = boto3.client("iam", endpoint_url=server.endpoint_url)
            arn = iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "sts:AssumeRole",
                    "Principal": {"Service": "sagemaker.amazonaws.com"}}]}))["Role"]["Arn"]
            yield server, arn


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["data", "synth", "-o", str(out), "--turbines", "1", "--seconds", "60",
                 "--fault-seconds", "5"]) == 0
    return out


def _argv(server, arn, data, out, bucket, *extra):
    return ["train", str(data), "-o", str(out), "--sagemaker", "--role-arn", arn,
            "--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/edged-train:1",
            "--instance-type", "ml.c5.xlarge", "--s3-input", f"s3://{bucket}/datasets",
            "--s3-output", f"s3://{bucket}/models", "--endpoint-url", server.endpoint_url,
            "--poll", "0", "--epochs", "7", *extra]


def _artifact(report: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, body in (("report.json", json.dumps(report).encode()),
                           ("model.onnx", b"onnx bytes")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


def test_a_job_is_created_as_asked_and_its_artifact_unpacked(aws, data, tmp_path, capsys):
    server, arn = aws
    bucket = server.create_bucket()
    s3 = boto3.client("s3", endpoint_url=server.endpoint_url)
    job = "edged-test-job-1"
    s3.put_object(Bucket=bucket, Key=f"models/{job}/output/model.tar.gz",
                  Body=_artifact({"name": "windturbine", "onnx_vs_torch_max_abs": 1e-6}))
    out = tmp_path / "out"
    assert main([*_argv(server, arn, data, out, bucket, "--job-name", job), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sagemaker"]["job"] == job
    assert (out / "model.onnx").read_bytes() == b"onnx bytes"

    described = boto3.client("sagemaker", endpoint_url=server.endpoint_url) \
        .describe_training_job(TrainingJobName=job)
    assert described["RoleArn"] == arn
    assert described["AlgorithmSpecification"]["TrainingImage"].endswith("edged-train:1")
    assert described["ResourceConfig"]["InstanceType"] == "ml.c5.xlarge"
    assert json.loads(described["HyperParameters"]["epochs"]) == 7
    channel = described["InputDataConfig"][0]
    assert channel["ChannelName"] == "train"
    uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    assert uri == f"s3://{bucket}/datasets/{job}/"
    uploaded = s3.get_object(Bucket=bucket, Key=f"datasets/{job}/dataset.npz")["Body"].read()
    assert uploaded == (data / "dataset.npz").read_bytes()
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{bucket}/models"


def test_a_missing_role_bucket_or_artifact_is_named(aws, data, tmp_path, capsys):
    server, arn = aws
    bucket = server.create_bucket()
    missing_role = arn.replace(ROLE, "no-such-role")
    assert main(_argv(server, missing_role, data, tmp_path / "a", bucket)) == 66
    assert "role no-such-role does not exist" in capsys.readouterr().err
    assert main(_argv(server, arn, data, tmp_path / "b", "no-such-bucket-c1t")) == 66
    assert "bucket no-such-bucket-c1t does not exist" in capsys.readouterr().err
    assert main(_argv(server, arn, data, tmp_path / "c", bucket, "--job-name", "no-art")) == 66
    err = capsys.readouterr().err
    assert f"no model at s3://{bucket}/models/no-art/output/model.tar.gz" in err
    assert main(["train", str(data), "-o", str(tmp_path / "d"), "--sagemaker"]) == 64
    assert "--sagemaker needs --role-arn, --image-uri, --s3-input, --s3-output" in \
        capsys.readouterr().err
