"""Publish a signed bundle to S3: one key per model version, the bytes checked after upload,
the same bytes twice a no-op, different bytes under a published version refused.

Key layout (docs/cloud.md, "publish"; ``edged-cloud deploy`` presigns these keys)::

    s3://BUCKET/PREFIX/NAME/VERSION/bundle.tar.gz     PREFIX defaults to "models"

with object metadata ``sha256`` (lowercase hex of the whole file), ``model-name``,
``model-version`` and ``key-id`` (the signing key), and S3's own ``ChecksumSHA256``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edged_cloud.errors import BadInput, CloudToolError, NotFound

DEFAULT_PREFIX = "models"
BUNDLE_NAME = "bundle.tar.gz"
#: Parts of 16 MiB: a bundle is a few hundred kilobytes to a few hundred megabytes.
PART_BYTES = 16 << 20


@dataclass(frozen=True)
class BundleInfo:
    path: Path
    name: str
    version: int
    key_id: str
    sha256: str
    size: int


def bundle_key(prefix: str, name: str, version: int) -> str:
    """The object key of version ``version`` of model ``name`` under ``prefix``."""
    prefix = prefix.strip("/")
    return "/".join(p for p in (prefix, name, str(version), BUNDLE_NAME) if p)


def read_bundle(path: Path) -> BundleInfo:
    """Name, version and signing key of the bundle at ``path``, read by the device's
    bounded unpacker (not trusted: publishing does not verify the signature)."""
    from pydantic import ValidationError

    from edged.base.strict_json import JsonError, loads
    from edged.model.bundle import BundleError, extract_bundle
    from edged.model.bundle.build import SIGNATURE
    from edged.model.package import MANIFEST, manifest_of, sha256_file

    if not path.is_file():
        raise NotFound(f"{path}: no such bundle")
    with tempfile.TemporaryDirectory(prefix="edged-publish-") as tmp:
        try:
            slot = extract_bundle(path, Path(tmp) / "slot")
            manifest = manifest_of((slot / MANIFEST).read_bytes())
            signature = loads((slot / SIGNATURE).read_bytes(), max_bytes=4096)
            kid = str(signature["key_id"])
        except (BundleError, JsonError, ValidationError, OSError, KeyError, TypeError) as exc:
            raise BadInput(f"{path}: not a signed model bundle: {exc}") from None
    return BundleInfo(path, manifest.name, manifest.version, kid, sha256_file(path),
                      path.stat().st_size)


class Progress:
    """A one-line progress bar on ``stream`` for boto3's transfer callback (called from
    the transfer's threads with the bytes just sent)."""

    def __init__(self, total: int, label: str, stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._shown = -1.0

    def __call__(self, sent: int) -> None:
        with self._lock:
            self.done += sent
            now = time.monotonic()
            if self.enabled and (now - self._shown >= 0.1 or self.done >= self.total):
                self._shown = now
                self._draw()

    def _draw(self) -> None:
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {share:6.1%} "
                          f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _code(exc: BaseException) -> str:
    from edged_cloud.aws import error_code

    return error_code(exc) or "error"


def _message(exc: BaseException) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Message", "") or str(exc)


def _existing(s3: Any, bucket: str, key: str) -> dict | None:
    """The object's head, None when there is none; NotFound for a missing bucket."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise _aws_error(f"reading s3://{bucket}/{key}", exc) from None
    except BotoCoreError as exc:
        raise CloudToolError(f"reading s3://{bucket}/{key}: {exc}") from None
    try:  # a HEAD answers a missing bucket and a missing key alike: ask the bucket
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            raise NotFound(f"bucket {bucket!r} does not exist") from None
        raise _aws_error(f"reading bucket {bucket!r}", exc) from None
    return None


def _aws_error(what: str, exc: BaseException) -> CloudToolError:
    code = _code(exc)
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "ExpiredToken", "InvalidToken"):
        return CloudToolError(f"{what}: AWS refused the credentials ({code}): "
                              f"{_message(exc)}; check AWS_PROFILE / AWS_ACCESS_KEY_ID")
    if code in ("404", "NoSuchBucket"):
        return NotFound(f"{what}: no such bucket")
    return CloudToolError(f"{what}: AWS answered {code}: {_message(exc)}")


def _sha256_of_object(s3: Any, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(1 << 20), b""):
        digest.update(chunk)
    return digest.hexdigest()


def check_uploaded(s3: Any, bundle: BundleInfo, bucket: str, key: str) -> str:
    """Confirm the object holds the bundle's bytes; return how it was confirmed."""
    head = _existing(s3, bucket, key)
    if head is None:
        raise CloudToolError(f"s3://{bucket}/{key} is missing right after its upload")
    if head.get("ContentLength") != bundle.size:
        raise CloudToolError(f"s3://{bucket}/{key} holds {head.get('ContentLength')} bytes, "
                             f"the bundle {bundle.size}")
    if head.get("Metadata", {}).get("sha256") != bundle.sha256:
        raise CloudToolError(f"s3://{bucket}/{key}: its sha256 metadata is not the bundle's "
                             "(another publisher raced this one?)")
    checksum = head.get("ChecksumSHA256")
    expected = base64.b64encode(bytes.fromhex(bundle.sha256)).decode()
    # A multipart upload's checksum is a checksum of the parts' checksums (AWS marks it
    # COMPOSITE and appends "-N"; moto's server does neither): only a single part's is
    # the file's SHA-256.
    multipart = (bundle.size >= PART_BYTES or head.get("ChecksumType") == "COMPOSITE"
                 or "-" in (checksum or ""))
    if checksum and not multipart:
        if checksum != expected:
            raise CloudToolError(f"s3://{bucket}/{key}: S3's SHA-256 {checksum} is not the "
                                 f"bundle's {expected}")
        return "ChecksumSHA256"
    # No whole-file checksum from S3: read the object back.
    if _sha256_of_object(s3, bucket, key) != bundle.sha256:
        raise CloudToolError(f"s3://{bucket}/{key}: the bytes read back differ from the "
                             "bundle's")
    return "read back"


def publish(path: Path, bucket: str, s3: Any, *, prefix: str = DEFAULT_PREFIX,
            progress: Progress | None = None, stream: IO[str] | None = None) -> dict:
    """Upload the bundle at ``path`` unless those very bytes are there; return the
    ``--json`` object. A different object under the same key is refused."""
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    bundle = read_bundle(path)
    key = bundle_key(prefix, bundle.name, bundle.version)
    url = f"s3://{bucket}/{key}"
    result = {"bucket": bucket, "key": key, "url": url, "name": bundle.name,
              "version": bundle.version, "sha256": bundle.sha256, "bytes": bundle.size,
              "key_id": bundle.key_id}
    head = _existing(s3, bucket, key)
    if head is not None:
        theirs = head.get("Metadata", {}).get("sha256")
        if theirs == bundle.sha256 and head.get("ContentLength") == bundle.size:
            return {**result, "uploaded": False, "already_published": True}
        raise CloudToolError(
            f"{url} holds a different bundle (sha256 {theirs or 'unknown'}, this one "
            f"{bundle.sha256}); a published version is never replaced: package this model "
            f"under a new --version", exit_code=1)
    progress = progress or Progress(bundle.size, f"uploading {key}", stream)
    config = TransferConfig(multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)
    extra = {"Metadata": {"sha256": bundle.sha256, "model-name": bundle.name,
                          "model-version": str(bundle.version), "key-id": bundle.key_id},
             "ContentType": "application/gzip", "ChecksumAlgorithm": "SHA256"}
    try:
        s3.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config,
                       Callback=progress)
    except (ClientError, BotoCoreError) as exc:
        raise _aws_error(f"uploading {url}", exc) from None
    except Exception as exc:  # s3transfer wraps AWS's errors in its own
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ClientError):
            raise _aws_error(f"uploading {url}", cause) from None
        raise CloudToolError(f"uploading {url}: {exc}") from None
    finally:
        progress.close()
    checked = check_uploaded(s3, bundle, bucket, key)
    return {**result, "uploaded": True, "already_published": False, "checked_by": checked}


def describe(result: dict) -> str:
    if result["already_published"]:
        return (f"{result['url']} already holds this bundle (sha256 {result['sha256']}): "
                "nothing to upload")
    return (f"published {result['url']} ({result['bytes']} bytes, sha256 {result['sha256']}, "
            f"checked by {result['checked_by']})")


def as_json(result: dict) -> str:
    return json.dumps(result, indent=2)
