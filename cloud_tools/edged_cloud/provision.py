"""Provision a device: its AWS IoT thing, certificate, least-privilege policy, group, and the
zip an installer unpacks into /etc/edged.

The policy names this thing alone (no policy variables, no wildcards across things): connect
as its own client id; publish, receive and subscribe under its own jobs topics, its health
shadow and ``edged/<thing>/`` (heartbeats, alarms); with a capture bucket, fetch
credentials through the role alias that writes its own capture prefix. ``iot:Subscribe``
takes ``topicfilter/`` resources, the rest ``topic/`` and ``client/`` (docs/jobs.md).
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged_cloud.aws import call
from edged_cloud.errors import BadInput, CloudToolError, NotFound

ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
ROOT_CA_PLACEHOLDER = f"""\
# This is not Amazon's root CA: it could not be fetched when this zip was made.
# Replace this file with Amazon Root CA 1 before starting edged:
#   curl -o AmazonRootCA1.pem {ROOT_CA_URL}
# (https://docs.aws.amazon.com/iot/latest/developerguide/server-authentication.html)
"""
HEALTH_SHADOW = "edged-health"
THING_NAME = r"[a-zA-Z0-9:_-]{1,128}"


@dataclass(frozen=True)
class Request:
    """What ``provision`` is asked for."""

    thing: str
    release_key: Path
    out: Path
    group: str | None = None
    bucket: str | None = None
    capture_prefix: str = "captures"
    role_alias: str = "edged-capture"
    device_dir: str = "/etc/edged"
    state_dir: str = "/var/lib/edged"
    root_ca: Path | None = None
    force: bool = False


def policy_document(arn_prefix: str, thing: str, *, role_alias_arn: str | None = None
                    ) -> dict[str, Any]:
    """The thing's own IoT policy (``arn_prefix``: ``arn:aws:iot:<region>:<account>``)."""
    topics = [f"$aws/things/{thing}/jobs/*",
              f"$aws/things/{thing}/shadow/name/{HEALTH_SHADOW}/*",
              f"edged/{thing}/*"]
    statements = [
        {"Effect": "Allow", "Action": "iot:Connect",
         "Resource": f"{arn_prefix}:client/{thing}"},
        {"Effect": "Allow", "Action": "iot:Subscribe",
         "Resource": [f"{arn_prefix}:topicfilter/{t}" for t in topics]},
        {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
         "Resource": [f"{arn_prefix}:topic/{t}" for t in topics]},
    ]
    if role_alias_arn is not None:
        statements.append({"Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                           "Resource": role_alias_arn})
    return {"Version": "2012-10-17", "Statement": statements}


def capture_role_policy(bucket: str, prefix: str) -> dict[str, Any]:
    """What the role behind the role alias must allow: each thing writes only its own
    partition of the capture layout (docs/credentials.md)."""
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{bucket}/{prefix}/device=${{credentials-iot:ThingName}}/*"}]}


def device_config(request: Request, endpoint: str, credentials_endpoint: str | None) -> str:
    """The device's ``edged.yaml``: the local turbine bus, the reference pipeline from the
    model store, and the cloud link to IoT Core with jobs and health."""
    d = request.device_dir.rstrip("/")
    capture = ""
    if request.bucket is not None:
        capture = f"""\
    capture:
      rate: {{every: 100}}
      anomalies: {{before: 5, after: 10}}
      destination:
        type: s3
        bucket: {request.bucket}
        prefix: {request.capture_prefix}
        credentials:
          provider: iot
          endpoint: {credentials_endpoint}
          role_alias: {request.role_alias}
          cert_file: {d}/device.pem.crt
          key_file: {d}/private.pem.key
          ca_file: {d}/AmazonRootCA1.pem
"""
    return f"""\
# Made by edged-cloud provision for thing {request.thing}. Check a change with
# `edged check-config {d}/edged.yaml`.
device:
  id: {request.thing}
state_dir: {request.state_dir}

sources:
  turbine-bus:
    type: mqtt
    broker: {{host: localhost, port: 1883}}
    topics: ["turbines/{{turbine}}/raw"]
    format: auto
    layout: dataset23
    on_start_failure: {{policy: retry}}

pipelines:
  turbines:
    inputs: [turbine-bus]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:windturbine"}}
    interval_s: 0.5
{capture}
actuators:
  operator-log:
    type: log
    inputs: [turbines]
    debounce: 2
    clear_after: 4
    cooldown_s: 30

cloud:
  thing_name: {request.thing}
  broker:
    host: {endpoint}
    port: 8883
    tls:
      ca_file: {d}/AmazonRootCA1.pem
      cert_file: {d}/device.pem.crt
      key_file: {d}/private.pem.key
  jobs:
    trust:
      keys_dir: {d}/trusted-keys
  health: {{interval_s: 60, shadow: {HEALTH_SHADOW}}}
"""


def root_ca(given: Path | None) -> tuple[bytes, bool]:
    """Amazon Root CA 1: the file given, else fetched, else a placeholder that says where
    to get it. The flag says whether it is the real thing."""
    if given is not None:
        try:
            return given.read_bytes(), True
        except OSError as exc:
            raise NotFound(f"--root-ca {given}: {exc.strerror}") from None
    try:
        with urllib.request.urlopen(ROOT_CA_URL, timeout=5) as answer:  # noqa: S310
            data = answer.read(16_384)
        if b"BEGIN CERTIFICATE" in data:
            return data, True
    except OSError:
        pass
    return ROOT_CA_PLACEHOLDER.encode(), False


def _entry(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.gmtime()[:6])
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def device_zip(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A zip of ``name -> (bytes, mode)``; unzip keeps each mode."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (data, mode) in files.items():
            archive.writestr(_entry(name, mode), data)
    return buffer.getvalue()


def _exists(function: Any, **kwargs: Any) -> bool:
    try:
        call("reading", function, missing="absent", **kwargs)
    except NotFound:
        return False
    return True


def _put_policy(iot: Any, name: str, document: dict[str, Any]) -> None:
    text = json.dumps(document)
    if not _exists(iot.get_policy, policyName=name):
        call(f"creating policy {name}", iot.create_policy, policyName=name,
             policyDocument=text)
        return
    versions = call(f"reading policy {name}", iot.list_policy_versions,
                    policyName=name)["policyVersions"]
    if len(versions) >= 5:  # AWS keeps five: the oldest one not in use goes
        oldest = min((v for v in versions if not v["isDefaultVersion"]),
                     key=lambda v: int(v["versionId"]))
        call(f"pruning policy {name}", iot.delete_policy_version, policyName=name,
             policyVersionId=oldest["versionId"])
    call(f"updating policy {name}", iot.create_policy_version, policyName=name,
         policyDocument=text, setAsDefault=True)


def provision(iot: Any, request: Request) -> dict[str, Any]:
    """Create (or with ``force`` renew) the thing's registration and write its zip."""
    if not re.fullmatch(THING_NAME, request.thing):
        raise BadInput(f"thing name {request.thing!r} is not 1-128 of [a-zA-Z0-9:_-]")
    try:
        release = request.release_key.read_bytes()
    except OSError as exc:
        raise NotFound(f"--release-key {request.release_key}: {exc.strerror}") from None
    if b"BEGIN PUBLIC KEY" not in release:
        raise BadInput(f"--release-key {request.release_key} is not a public key in PEM "
                       "(the .pub.pem that edged-cloud keys writes)")
    if request.out.exists() and not request.force:
        raise CloudToolError(f"{request.out} exists: it may hold another device's key; "
                             "use --force to replace it")
    if request.group is not None:
        call(f"reading thing group {request.group}", iot.describe_thing_group,
             thingGroupName=request.group,
             missing=f"thing group {request.group} does not exist (aws iot "
                     f"create-thing-group --thing-group-name {request.group})")
    renewed: list[str] = []
    if _exists(iot.describe_thing, thingName=request.thing):
        if not request.force:
            raise CloudToolError(f"thing {request.thing} exists already: --force issues it "
                                 "a new certificate and retires the old ones")
        principals = call("listing the thing's certificates", iot.list_thing_principals,
                          thingName=request.thing)["principals"]
        for arn in principals:
            call("detaching an old certificate", iot.detach_thing_principal,
                 thingName=request.thing, principal=arn)
            call("retiring an old certificate", iot.update_certificate,
                 certificateId=arn.rsplit("/", 1)[-1], newStatus="INACTIVE")
            renewed.append(arn)
    else:
        call(f"creating thing {request.thing}", iot.create_thing, thingName=request.thing)
    thing_arn = call("reading the thing", iot.describe_thing,
                     thingName=request.thing)["thingArn"]
    arn_prefix = thing_arn.rsplit(":", 1)[0]  # arn:aws:iot:<region>:<account>
    role_alias_arn = None
    credentials_endpoint = None
    if request.bucket is not None:
        role_alias_arn = f"{arn_prefix}:rolealias/{request.role_alias}"
        credentials_endpoint = call("reading the credentials endpoint", iot.describe_endpoint,
                                    endpointType="iot:CredentialProvider")["endpointAddress"]
    endpoint = call("reading the IoT endpoint", iot.describe_endpoint,
                    endpointType="iot:Data-ATS")["endpointAddress"]
    policy_name = f"edged-{request.thing}"
    _put_policy(iot, policy_name, policy_document(arn_prefix, request.thing,
                                                  role_alias_arn=role_alias_arn))
    keys = call("creating keys and certificate", iot.create_keys_and_certificate,
                setAsActive=True)
    call("attaching the policy", iot.attach_policy, policyName=policy_name,
         target=keys["certificateArn"])
    call("attaching the certificate", iot.attach_thing_principal, thingName=request.thing,
         principal=keys["certificateArn"])
    if request.group is not None:
        call(f"adding {request.thing} to {request.group}", iot.add_thing_to_thing_group,
             thingGroupName=request.group, thingName=request.thing)
    ca, real_ca = root_ca(request.root_ca)
    config = device_config(request, endpoint, credentials_endpoint)
    files = {"device.pem.crt": (keys["certificatePem"].encode(), 0o644),
             "private.pem.key": (keys["keyPair"]["PrivateKey"].encode(), 0o600),
             "AmazonRootCA1.pem": (ca, 0o644),
             f"trusted-keys/{request.release_key.name}": (release, 0o644),
             "edged.yaml": (config.encode(), 0o644)}
    request.out.parent.mkdir(parents=True, exist_ok=True)
    request.out.unlink(missing_ok=True)
    # The zip holds the private key: only its owner reads it.
    with open(request.out, "xb", opener=_private) as out:
        out.write(device_zip(files))
    report: dict[str, Any] = {
        "thing": request.thing, "thing_arn": thing_arn, "group": request.group,
        "certificate_id": keys["certificateId"], "policy": policy_name,
        "endpoint": endpoint, "zip": str(request.out), "files": sorted(files),
        "root_ca": "fetched" if real_ca else "placeholder", "retired_certificates": renewed}
    if request.bucket is not None:
        report["capture_role_policy"] = capture_role_policy(request.bucket,
                                                            request.capture_prefix)
    return report


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
