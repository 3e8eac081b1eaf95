"""``edged-cloud train --sagemaker``: the same training as a SageMaker training job,
through boto3's ``sagemaker`` client (not the SageMaker SDK, whose protobuf pin clashes
with the device's gRPC stack).

The job runs an image with ``edged-cloud[train]`` whose entry point is
``python -m edged_cloud.train.container``: it reads the dataset from the ``train``
channel and the options from the hyperparameters, trains exactly as ``edged-cloud train``
does and writes OUTDIR into ``/opt/ml/model``, which SageMaker uploads as
``<S3OutputPath>/<job>/output/model.tar.gz``. This side uploads the dataset, creates the
job, waits, and unpacks that archive into OUTDIR.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from edged_cloud.data import dataset as ds
from edged_cloud.errors import EX_USAGE, BadInput, CloudToolError, NotFound
from edged_cloud.train.fit import FitOptions

CHANNEL = "train"
FINAL = ("Completed", "Failed", "Stopped")
MAX_ARTIFACT_BYTES = 1 << 30


def hyperparameters(options: FitOptions, args: argparse.Namespace) -> dict[str, str]:
    """The options as SageMaker hyperparameters (strings), read back by the container."""
    values = {**asdict(options), "holdout": args.holdout, "version": args.version,
              "denoise": args.denoise, "thresholds": args.thresholds,
              "quantile": args.quantile, "margin": args.margin}
    return {k: json.dumps(v) for k, v in values.items() if v is not None}


def _s3_url(text: str | None, option: str) -> tuple[str, str]:
    if not text or not text.startswith("s3://") or not text[5:].split("/")[0]:
        raise CloudToolError(f"{option}: expected s3://bucket/prefix, got {text!r}",
                             exit_code=EX_USAGE)
    bucket, _, prefix = text[5:].partition("/")
    return bucket, prefix.strip("/")


def _check_bucket(s3, bucket: str) -> None:
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise NotFound(f"bucket {bucket} does not exist") from None
        raise CloudToolError(f"bucket {bucket}: {code or exc}") from None


def _check_role(iam, role_arn: str) -> None:
    """A role that does not exist is named now, not after a job failed; a caller who may
    not read IAM is trusted (SageMaker will say)."""
    from botocore.exceptions import ClientError

    name = role_arn.rsplit("/", 1)[-1]
    if not role_arn.startswith("arn:") or ":role/" not in role_arn:
        raise BadInput(f"--role-arn: {role_arn!r} is not a role ARN "
                       "(arn:aws:iam::ACCOUNT:role/NAME)")
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code == "NoSuchEntity":
            raise NotFound(f"role {name} does not exist ({role_arn})") from None
        if code not in ("AccessDenied", "AccessDeniedException"):
            raise CloudToolError(f"role {name}: {code or exc}") from None


def _unpack(body: bytes, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as archive:
            archive.extractall(out, filter="data")  # no links out, no absolute paths
    except (tarfile.TarError, OSError) as exc:
        raise BadInput(f"model.tar.gz: cannot unpack: {exc}") from None


def submit(args: argparse.Namespace, options: FitOptions) -> dict:
    import boto3
    from botocore.exceptions import ClientError

    missing = [o for o, v in (("--role-arn", args.role_arn), ("--image-uri", args.image_uri),
                              ("--s3-input", args.s3_input), ("--s3-output", args.s3_output))
               if not v]
    if missing:
        raise CloudToolError(f"--sagemaker needs {', '.join(missing)}", exit_code=EX_USAGE)
    dataset = ds.load(args.data)  # refused here, not in a job that has already cost money
    in_bucket, in_prefix = _s3_url(args.s3_input, "--s3-input")
    out_bucket, out_prefix = _s3_url(args.s3_output, "--s3-output")
    clients = {name: boto3.client(name, endpoint_url=args.endpoint_url, region_name=args.region)
               for name in ("s3", "sagemaker", "iam")}
    s3 = clients["s3"]
    for bucket in dict.fromkeys((in_bucket, out_bucket)):
        _check_bucket(s3, bucket)
    _check_role(clients["iam"], args.role_arn)

    job = args.job_name or f"edged-windturbine-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    data_prefix = f"{in_prefix}/{job}".strip("/")
    npz = args.data / ds.DATASET if args.data.is_dir() else args.data
    s3.upload_file(str(npz), in_bucket, f"{data_prefix}/{ds.DATASET}")
    s3.put_object(Bucket=in_bucket, Key=f"{data_prefix}/{ds.META}",
                  Body=json.dumps(dataset.meta).encode())
    request = {
        "TrainingJobName": job,
        "RoleArn": args.role_arn,
        "AlgorithmSpecification": {"TrainingImage": args.image_uri, "TrainingInputMode": "File"},
        "HyperParameters": hyperparameters(options, args),
        "InputDataConfig": [{
            "ChannelName": CHANNEL,
            "DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{in_bucket}/{data_prefix}/",
                "S3DataDistributionType": "FullyReplicated"}},
        }],
        "OutputDataConfig": {"S3OutputPath": f"s3://{out_bucket}/{out_prefix}".rstrip("/")},
        "ResourceConfig": {"InstanceType": args.instance_type, "InstanceCount": 1,
                           "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": args.max_runtime},
    }
    sagemaker = clients["sagemaker"]
    try:
        sagemaker.create_training_job(**request)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise CloudToolError(f"SageMaker refused training job {job}: "
                             f"{error.get('Code')}: {error.get('Message')}") from None
    while True:
        described = sagemaker.describe_training_job(TrainingJobName=job)
        status = described["TrainingJobStatus"]
        if status in FINAL:
            break
        time.sleep(args.poll)
    if status != "Completed":
        raise CloudToolError(f"training job {job} {status.lower()}: "
                             f"{described.get('FailureReason', 'no reason given')}")
    artifact = described["ModelArtifacts"]["S3ModelArtifacts"]
    bucket, _, key = artifact.removeprefix("s3://").partition("/")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
        if head["ContentLength"] > MAX_ARTIFACT_BYTES:
            raise BadInput(f"{artifact}: over {MAX_ARTIFACT_BYTES} bytes")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError:
        raise NotFound(f"training job {job} completed, but there is no model at {artifact}"
                       ) from None
    _unpack(body, args.out)
    report_path = args.out / "report.json"
    if not report_path.is_file():
        raise BadInput(f"{artifact}: holds no report.json (not an edged-cloud training)")
    summary = json.loads(report_path.read_text())
    summary["sagemaker"] = {"job": job, "artifact": artifact, "request": request}
    return summary
