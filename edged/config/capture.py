"""The ``capture:`` key of a pipeline: what to sample, where to spool, where to upload.

The config's model only; the capture itself (edged.capture) is on a floor above. See
docs/capture.md, "Pipeline capture".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edged.plugin.config import Strict


class RateSpec(Strict):
    every: int = Field(ge=1, description="Capture one decision in this many (1: all).")
    mode: Literal["counter", "random"] = Field(
        "counter", description="counter: every N-th decision of each turbine; random: "
        "each decision with probability 1/N.")
    seed: int | None = Field(None, description="Seed of the random mode (None: random).")


class ReservoirSpec(Strict):
    size: int = Field(ge=1, le=100_000, description="Decisions kept per window.")
    window_s: float = Field(gt=0, description="Length of a window; the sample of a "
                            "window is captured when the next one begins.")
    seed: int | None = Field(None, description="Seed of the sampler (None: random).")


class AnomalySpec(Strict):
    before: int = Field(0, ge=0, le=1000, description="Decisions of the same turbine "
                        "kept ahead of an anomaly and captured with it.")
    after: int = Field(0, ge=0, le=100_000, description="Decisions of the same turbine "
                       "captured after an anomaly.")


#: Free space a capture spool leaves on its filesystem by default: room for the journal,
#: the model store and the state files that share the disk; on a small filesystem a share
#: of it instead (journald's rule), so that a spool on its own small disk still captures.
MIN_FREE_MB = 32.0
MIN_FREE_SHARE = 0.15


def default_reserve(filesystem_bytes: int) -> int:
    """The free space a spool leaves when ``min_free_mb`` is not set."""
    return int(min(MIN_FREE_MB * 1024 * 1024, MIN_FREE_SHARE * filesystem_bytes))


def reserve_bytes(min_free_mb: float | None) -> int | None:
    """``min_free_mb`` as bytes; None (the default, sized by the filesystem) if unset."""
    return None if min_free_mb is None else int(min_free_mb * 1024 * 1024)


class SketchSpec(Strict):
    enabled: bool = Field(True, description="Keep hourly sketches of what the model sees "
                          "(input and error histograms, decision and anomaly counts) and "
                          "upload one small `sketch` record per model version and hour "
                          "(docs/capture.md). On wherever capture is configured.")


class CaptureSpoolSpec(Strict):
    budget_mb: float = Field(256.0, gt=0, description="Disk the spool may use (what its "
                             "files take on disk, whole blocks); beyond it the oldest "
                             "records without an anomaly are dropped first.")
    min_free_mb: float | None = Field(
        None, ge=0, description="Free space the spool leaves on its filesystem: "
        "below it the oldest records are dropped as for the budget, and new ones are "
        "refused (counted) when nothing can be dropped. 0: write until the disk is full. "
        "Default: 32 MiB, or 15% of a filesystem smaller than 213 MiB.")
    fsync: Literal["always", "batch", "never"] = Field(
        "batch", description="always: each record is its own fsync'ed file; batch: each "
        "write of the records queued at that moment is fsync'ed once; never: no fsync "
        "(a process crash loses nothing, a power cut may).")
    queue_size: int = Field(10_000, ge=1, description="Picked decisions waiting for the "
                            "writer; a full queue drops new ones, counted.")
    include_window: bool = Field(False, description="Add the model's input window "
                                 "(history x features) to each record.")
    include_rows: bool = Field(False, description="Add the raw source rows the window "
                               "was built from (history x inputs, before preprocessing) "
                               "and the input names to each record.")
    include_model_io: bool = Field(False, description="Add the model's own input and "
                                   "output for the turbine (e.g. the wind-turbine "
                                   "autoencoder's windows and their reconstruction).")


# AWS's own limits on the names the credentials provider is called with.
ROLE_ALIAS_PATTERN = r"^[A-Za-z0-9_=,@-]{1,128}$"
THING_NAME_PATTERN = r"^[a-zA-Z0-9:_-]{1,128}$"
_CREDENTIALS_PATH = re.compile(r"/role-aliases/([^/]+)/credentials/?")


def split_iot_endpoint(endpoint: str) -> tuple[str, int, str | None]:
    """(host, port, role alias or None) of a credentials provider endpoint given as a
    host, ``host:port``, ``https://host[:port]`` or the full
    ``https://host/role-aliases/<alias>/credentials`` URL; ValueError says what is wrong."""
    text = endpoint.strip()
    if "://" not in text:
        text = f"https://{text}"
    try:
        url = urlsplit(text)
        port = url.port or 443
    except ValueError as exc:
        raise ValueError(f"endpoint {endpoint!r} is not a host or URL: {exc}") from None
    if url.scheme != "https":
        raise ValueError(f"endpoint {endpoint!r}: the credentials provider is reached over "
                         f"https (mutual TLS), not {url.scheme}")
    if not url.hostname or url.username or url.password or url.query or url.fragment:
        raise ValueError(f"endpoint {endpoint!r}: give a host (the account's "
                         "iot:CredentialProvider endpoint) or its full credentials URL")
    alias = None
    if url.path not in ("", "/"):
        found = _CREDENTIALS_PATH.fullmatch(url.path)
        if not found:
            raise ValueError(f"endpoint {endpoint!r}: the path must be "
                             f"/role-aliases/<role alias>/credentials, not {url.path!r}")
        alias = found[1]
        if not re.fullmatch(ROLE_ALIAS_PATTERN, alias):
            raise ValueError(f"endpoint {endpoint!r}: {alias!r} is not a role alias "
                             "(1-128 letters, digits and _=,@-)")
    return url.hostname, port, alias


class IotCredentialsSpec(Strict):
    """Temporary S3 credentials from the AWS IoT Core credentials provider, for the
    device's X.509 certificate (docs/credentials.md): no AWS keys on the device."""

    provider: Literal["iot"]
    endpoint: str = Field(
        min_length=1, description="The account's iot:CredentialProvider endpoint (`aws iot "
        "describe-endpoint --endpoint-type iot:CredentialProvider`), or its full "
        "https://<endpoint>/role-aliases/<alias>/credentials URL.")
    role_alias: str | None = Field(
        None, pattern=ROLE_ALIAS_PATTERN, description="The IoT role alias whose IAM role "
        "the credentials are for (may instead be part of endpoint).")
    thing_name: str | None = Field(
        None, pattern=THING_NAME_PATTERN, description="Sent as x-amzn-iot-thingname; "
        "default: the device's cloud thing name (cloud.thing_name, else device.id).")
    cert_file: Path = Field(description="The thing's certificate (PEM).")
    key_file: Path = Field(description="The certificate's private key (PEM).")
    ca_file: Path | None = Field(None, description="CA bundle the endpoint's certificate "
                                 "is checked against (default: the system's).")
    timeout_s: float = Field(10.0, gt=0, le=120, description="Connect and read timeout "
                             "of one request to the endpoint.")

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, endpoint: str) -> str:
        split_iot_endpoint(endpoint)
        return endpoint

    @model_validator(mode="after")
    def _check_role_alias(self) -> IotCredentialsSpec:
        _, _, alias = split_iot_endpoint(self.endpoint)
        if alias is None and self.role_alias is None:
            raise ValueError("role_alias is required unless endpoint is the full "
                             "https://<endpoint>/role-aliases/<alias>/credentials URL")
        if alias is not None and self.role_alias is not None and alias != self.role_alias:
            raise ValueError(f"role_alias {self.role_alias!r} differs from the alias in "
                             f"endpoint ({alias!r}); give one of them")
        return self


class S3DestinationSpec(Strict):
    type: Literal["s3"]
    bucket: str = Field(min_length=3, max_length=63, description="The S3 bucket.")
    prefix: str = Field("captures", description="Key prefix before device=<id>/...")
    endpoint_url: str | None = Field(None, description="An S3-compatible endpoint.")
    region: str | None = Field(None, description="AWS region (default: the SDK's).")
    credentials: IotCredentialsSpec | None = Field(
        None, description="Where the S3 credentials come from; absent: the standard AWS "
        "chain (environment, shared files, instance role).")


class PresignedDestinationSpec(Strict):
    """S3 through pre-signed PUT URLs that the fleet's signer hands out over the cloud
    link (docs/capture.md, "Pre-signed uploads"): neither S3 keys nor an IAM role on the
    device. Needs a ``cloud:`` section."""

    type: Literal["presigned"]
    timeout_s: float = Field(15.0, gt=0, le=300, description="Wait for the signer's "
                             "answer to one request for URLs.")
    put_timeout_s: float = Field(30.0, gt=0, le=600, description="Socket timeout of one "
                                 "PUT to a URL.")
    ca_file: Path | None = Field(None, description="CA bundle the URLs' HTTPS endpoint is "
                                 "checked against (default: the system's).")


class DiskDestinationSpec(Strict):
    type: Literal["disk"]
    path: Path = Field(description="Directory the objects are written under.")


class UploadSpec(Strict):
    interval_s: float = Field(30.0, gt=0, description="Upload what is spooled this often.")
    max_records: int = Field(10_000, ge=1, description="Records per upload at most.")
    retry_backoff_s: float = Field(1.0, gt=0, description="Bound of the first retry "
                                   "delay (full jitter); doubles.")
    max_backoff_s: float = Field(60.0, gt=0, description="Upper bound of the retry delay.")
    attempts: int = Field(5, ge=1, description="Attempts at an upload the destination "
                          "refuses for good (no such bucket, access denied) before its "
                          "records are set aside under the spool's failed/ folder. An "
                          "unreachable or throttling destination is retried for as long "
                          "as it takes.")


class PipelineCaptureSpec(Strict):
    """Sampled capture of a pipeline's decisions into a durable spool, then uploaded."""

    rate: RateSpec | None = Field(None, description="Capture a fixed share.")
    reservoir: ReservoirSpec | None = Field(None, description="Capture K per window.")
    anomalies: AnomalySpec | None = Field(None, description="Capture every anomalous "
                                          "decision and its context.")
    spool: CaptureSpoolSpec = Field(default_factory=CaptureSpoolSpec)
    upload: UploadSpec = Field(default_factory=UploadSpec)
    sketches: SketchSpec = Field(default_factory=SketchSpec)
    destination: Annotated[S3DestinationSpec | PresignedDestinationSpec | DiskDestinationSpec,
                           Field(discriminator="type")]
