"""Where uploads go: files under a folder (Disk) or objects in S3 (Cloud).

Both take the ``(key, bytes)`` objects :func:`edged.capture.segments.build_objects`
makes. Both block; the uplink calls them from a thread. A failure is raised as
:class:`DeliveryError`, marked ``transient`` when waiting is likely to cure it (the
endpoint is unreachable, slow or throttling): the uplink retries those for as long as
it takes, and everything else a bounded number of times.
"""

from __future__ import annotations

import http.client
import re
import ssl
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from edged.base.durable import makedirs_durably, write_durably
from edged.base.errors import EdgedError
from edged.base.http import request, tls_context
from edged.capture.url_protocol import ObjectToSign, SignedUrl

# S3 error codes that mean "later", whatever the HTTP status says.
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException",
                              "RequestTimeout", "RequestTimeTooSkewed", "ExpiredToken",
                              "RequestLimitExceeded", "ServiceUnavailable",
                              "InternalError"})


class DeliveryError(EdgedError):
    """A batch could not be written to its destination; ``transient`` if worth waiting."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def s3_refusal(where: str, status: int, code: str | None, message: str) -> DeliveryError:
    """An S3 error answer as a DeliveryError: transient for 5xx, 429, the codes that
    mean "later", and an expired pre-signed URL (the next attempt signs anew)."""
    transient = (status >= 500 or status == 429 or code in _TRANSIENT_CODES
                 or (status == 403 and "expired" in message.lower()))
    return DeliveryError(f"{where}: HTTP {status} {code} {message}".rstrip(),
                         transient=transient)


class Destination(Protocol):
    name: str

    def open(self) -> None: ...

    def write(self, objects: list[tuple[str, bytes]]) -> None: ...

    def close(self) -> None: ...


def clean_prefix(prefix: str) -> str:
    """``folder_prefix`` as a relative POSIX path without empty or dot segments."""
    parts = [p for p in PurePosixPath(prefix.strip("/")).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"folder prefix {prefix!r} may not contain '..'")
    return "/".join(parts)


class DiskDestination:
    """Objects as files under ``root``, each written through a temporary name: a file
    that exists is whole, and a replay rewrites it with the same bytes."""

    name = "Disk"

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    def open(self) -> None:
        try:
            makedirs_durably(self.root, self.fsync)
        except OSError as exc:
            raise DeliveryError(f"cannot create {self.root}: {exc}", transient=False) from exc

    def write(self, objects: list[tuple[str, bytes]]) -> None:
        for key, body in objects:
            path = self.root / key
            try:
                makedirs_durably(path.parent, self.fsync)
                write_durably(path, [body], self.fsync)
            except OSError as exc:
                raise DeliveryError(f"writing {path}: {exc}", transient=False) from exc

    def close(self) -> None:
        pass


class S3Destination:
    """Objects under ``s3://bucket/prefix/``; boto3 is imported on open."""

    name = "Cloud"

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, connect_timeout_s: float = 5.0,
                 read_timeout_s: float = 30.0, credentials: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        # An edged.capture.credentials.IotCredentialsProvider, or None: the standard AWS chain.
        self.credentials = credentials
        self._client: Any = None
        self._errors: tuple[type[Exception], ...] = ()

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def open(self) -> None:
        try:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError as exc:
            raise ImportError("the Cloud capture destination needs boto3: "
                              "pip install 'edged[s3]'") from exc
        config = Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            # The uplink retries whole uploads with its own backoff, for as long as the
            # endpoint is down; botocore's few quick retries would only add to the wait.
            retries={"total_max_attempts": 1},
            # S3-compatible stores (and moto) on an IP address want path-style URLs.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        session = (boto3.session.Session() if self.credentials is None
                   else self.credentials.session())
        self._client = session.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config)
        self._errors = (BotoCoreError, ClientError)

    def write(self, objects: list[tuple[str, bytes]]) -> None:
        for relative, body in objects:
            try:
                self._client.put_object(Bucket=self.bucket, Key=self.key(relative), Body=body)
            except self._errors as exc:
                raise self._classify(exc, relative) from exc

    def _classify(self, exc: Exception, relative: str) -> DeliveryError:
        from botocore.exceptions import ClientError, HTTPClientError
        from botocore.exceptions import ConnectionError as BotoConnectionError

        where = f"s3://{self.bucket}/{self.key(relative)}"
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return DeliveryError(f"{where}: {exc}", transient=True)
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return s3_refusal(where, status, error.get("Code"), error.get("Message", ""))
        return DeliveryError(f"{where}: {exc}", transient=False)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class Signer(Protocol):
    """Hands out pre-signed PUT URLs (the cloud link's UploadUrlClient)."""

    def sign_blocking(self, objects: list[ObjectToSign], timeout_s: float
                      ) -> list[SignedUrl]: ...


class PresignedDestination:
    """Objects PUT to the URLs a signer hands out: S3 without S3 credentials.

    ``signer`` (a :class:`Signer`: edged.cloud.upload_urls.UploadUrlClient) is attached by
    the cloud link (edged.cloud.link.build_cloud); until it is, and while the link is down,
    uploads fail as transient and wait in the spool. Every attempt asks for fresh URLs, so
    a URL that expired meanwhile is never used twice. Blocking, like every destination:
    the uplink calls it from a worker thread."""

    name = "Cloud"

    def __init__(self, *, timeout_s: float = 15.0, put_timeout_s: float = 30.0,
                 ca_file: Path | None = None) -> None:
        self.timeout_s = timeout_s  # for the signer's answer
        self.put_timeout_s = put_timeout_s
        self.ca_file = ca_file
        self.signer: Signer | None = None
        self._tls: ssl.SSLContext | None = None

    def open(self) -> None:
        try:
            self._tls = tls_context(ca_file=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise DeliveryError(f"cannot load ca_file {self.ca_file}: {exc}",
                                transient=False) from exc

    def write(self, objects: list[tuple[str, bytes]]) -> None:
        signer = self.signer
        if signer is None:
            raise DeliveryError("no cloud link to ask for upload URLs", transient=True)
        urls = signer.sign_blocking([ObjectToSign.of(key, body) for key, body in objects],
                                    self.timeout_s)
        for signed, (_, body) in zip(urls, objects, strict=True):
            self._put(signed, body)

    def _put(self, signed: SignedUrl, body: bytes) -> None:
        # Never log the query: it carries the signature.
        where = f"PUT {urllib.parse.urlsplit(signed.url)._replace(query='').geturl()}"
        headers = {"Content-Type": "application/octet-stream", **signed.headers}
        try:
            # Through the environment's proxy: as urllib did here, as boto3 does for S3.
            reply = request("PUT", signed.url, timeout_s=self.put_timeout_s, proxy=True,
                            tls=self._tls, headers=headers, body=body,
                            max_reply_bytes=4096)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"{where}: {exc}", transient=True) from None
        if not 200 <= reply.status < 300:  # a redirect too: the URL is signed for one host
            code, message = _s3_error(reply.body)
            raise s3_refusal(where, reply.status, code, message or reply.reason)

    def close(self) -> None:
        pass


def _s3_error(body: bytes) -> tuple[str | None, str]:
    """Code and Message of an S3 XML error body (read with a regex: no XML parser for
    what an endpoint sends)."""
    text = body.decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,128})</Code>", text)
    message = re.search(r"<Message>([^<]{0,512})</Message>", text)
    return (code[1] if code else None), (message[1] if message else "")
