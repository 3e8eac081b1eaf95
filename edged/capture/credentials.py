"""Temporary AWS credentials for the device's X.509 certificate: the AWS IoT Core
credentials provider, so that a device uploads to S3 with no AWS keys on it.

One HTTPS GET, with mutual TLS (the thing's certificate and key), to
``https://<endpoint>/role-aliases/<alias>/credentials`` with the header
``x-amzn-iot-thingname``, answers ``{"credentials": {"accessKeyId", "secretAccessKey",
"sessionToken", "expiration"}}``: STS credentials of the IAM role the alias points to,
valid 15 minutes to 12 hours. Errors come back as a status and ``{"message": ...}``
(403: certificate, thing or IoT policy refused; 404: no such role alias; 400: the role
cannot be assumed). See docs/credentials.md.

:class:`IotCredentialsProvider` makes that request and gives botocore refreshable
credentials, fetched on first use and again ``refresh_before_s`` ahead of their
expiration, and a boto3 Session built on them. Failures are raised as
:class:`IotCredentialsError`, a :class:`DeliveryError` marked ``transient`` when
waiting may cure it (endpoint unreachable, throttling, 5xx), so that the capture
uploaders retry a batch as they do for S3's own errors.
"""

from __future__ import annotations

import datetime
import http.client
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from edged.base.errors import ConfigError
from edged.base.http import request, tls_context
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads
from edged.capture.destinations import DeliveryError
from edged.config.capture import THING_NAME_PATTERN, split_iot_endpoint

if TYPE_CHECKING:
    import boto3
    from botocore.credentials import RefreshableCredentials

    from edged.config.capture import IotCredentialsSpec

log = structlog.get_logger("edged.capture.credentials")

THING_HEADER = "x-amzn-iot-thingname"
METHOD = "iot-credentials-provider"  # botocore's name for where credentials came from
MAX_REPLY_BYTES = 64 * 1024  # a real reply is about 1.5 KB

# TLS alerts by which a server refuses the client's certificate (OpenSSL's reasons).
_REFUSED_CERTIFICATE = frozenset({
    "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    "TLSV1_ALERT_ACCESS_DENIED", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})


class IotCredentialsError(DeliveryError):
    """The credentials provider gave no usable credentials; ``transient`` if worth waiting."""

    def __init__(self, message: str, *, transient: bool, reason: str) -> None:
        super().__init__(message, transient=transient)
        self.reason = reason


class IotCredentialsProvider:
    """Fetches credentials from ``https://host:port/role-aliases/<role_alias>/credentials``
    as ``thing_name``, with ``cert_file``/``key_file`` and the endpoint checked against
    ``ca_file`` (default: the system's CAs).

    Counters: ``iot_credentials_fetched``, ``iot_credentials_failures{reason}`` (reason:
    unreachable, tls, certificate_refused, refused, unknown_role_alias, role, throttled,
    server_error, http_error, malformed, files).
    """

    def __init__(self, host: str, role_alias: str, thing_name: str, cert_file: Path,
                 key_file: Path, *, port: int = 443, ca_file: Path | None = None,
                 timeout_s: float = 10.0, refresh_before_s: float = 300.0,
                 counters: Counters | None = None) -> None:
        if not re.fullmatch(THING_NAME_PATTERN, thing_name):
            raise ValueError(f"thing name {thing_name!r}: 1-128 letters, digits and :_-")
        self.host = host
        self.port = port
        self.role_alias = role_alias
        self.thing_name = thing_name
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.ca_file = Path(ca_file) if ca_file is not None else None
        self.timeout_s = timeout_s
        # botocore's own 15/10 minute windows would refetch on every request for
        # credentials issued for 15 minutes (a role alias's shortest duration).
        self.refresh_before_s = refresh_before_s
        self.counters = counters if counters is not None else Counters()
        self._rate_limit = RateLimit(interval=60.0)

    @property
    def path(self) -> str:
        return f"/role-aliases/{self.role_alias}/credentials"

    @property
    def url(self) -> str:
        port = "" if self.port == 443 else f":{self.port}"
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"https://{host}{port}{self.path}"

    # -- the request ---------------------------------------------------------------------

    def tls_context(self) -> ssl.SSLContext:
        """A client context with the thing's certificate; reads the files, so each fetch
        picks up a rotated certificate without a restart."""
        try:
            return tls_context(ca_file=self.ca_file, cert_file=self.cert_file,
                               key_file=self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise self._error(
                f"cannot load the TLS files (cert_file {self.cert_file}, key_file "
                f"{self.key_file}, ca_file {self.ca_file or 'system'}): {exc}",
                transient=False, reason="files") from exc

    def fetch(self) -> dict[str, str]:
        """(Blocking.) One request; the credentials as botocore's metadata dict
        (access_key, secret_key, token, expiry_time)."""
        context = self.tls_context()
        try:
            # Straight to the endpoint, as it always went: the proxy variables that the
            # webhook and the pre-signed PUT honour have never applied here.
            reply = request("GET", self.url, timeout_s=self.timeout_s, proxy=False,
                            tls=context, max_reply_bytes=MAX_REPLY_BYTES + 1,
                            headers={THING_HEADER: self.thing_name,
                                     "Accept": "application/json"})
        except ssl.SSLCertVerificationError as exc:
            raise self._error(
                f"the endpoint's certificate is not trusted ({exc.verify_message}; "
                f"ca_file {self.ca_file or 'system'})", transient=False, reason="tls") from exc
        except ssl.SSLError as exc:
            if exc.reason in _REFUSED_CERTIFICATE:
                raise self._error(
                    f"the endpoint refused the certificate {self.cert_file} ({exc.reason}): "
                    "is it issued by a CA the account trusts, and active?",
                    transient=False, reason="certificate_refused") from exc
            raise self._error(f"TLS failed: {exc}", transient=True, reason="tls") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise self._error(f"unreachable: {type(exc).__name__}: {exc}", transient=True,
                              reason="unreachable") from exc
        if len(reply.body) > MAX_REPLY_BYTES:
            raise self._error(f"reply larger than {MAX_REPLY_BYTES} bytes", transient=False,
                              reason="malformed")
        metadata = self._parse(reply.status, reply.body)
        self.counters.inc("iot_credentials_fetched")
        log.info("iot_credentials_fetched", endpoint=self.host, role_alias=self.role_alias,
                 thing=self.thing_name, expiration=metadata["expiry_time"])
        return metadata

    def _parse(self, status: int, body: bytes) -> dict[str, str]:
        refused = None
        try:
            # Repeated keys refused: two accessKeyIds leave no right one to use.
            reply = strict_loads(body, max_bytes=MAX_REPLY_BYTES)
        except JsonError as exc:
            reply, refused = None, str(exc)
        if status != 200:
            message = reply.get("message") if isinstance(reply, dict) else None
            detail = repr(message) if isinstance(message, str) else _excerpt(body)
            raise self._status_error(status, detail)
        credentials = reply.get("credentials") if isinstance(reply, dict) else None
        if not isinstance(credentials, dict):
            what = refused or 'no "credentials" object'
            raise self._error(f"malformed reply: {what}: {_excerpt(body)}",
                              transient=False, reason="malformed")
        fields = {}
        for key in ("accessKeyId", "secretAccessKey", "sessionToken", "expiration"):
            value = credentials.get(key)
            if not isinstance(value, str) or not value:
                raise self._error(f'malformed reply: "credentials" has no {key} string',
                                  transient=False, reason="malformed")
            fields[key] = value
        try:
            expiration = datetime.datetime.fromisoformat(fields["expiration"])
        except ValueError:
            expiration = None
        if expiration is None or expiration.tzinfo is None:
            raise self._error(f"malformed reply: expiration {fields['expiration']!r} is not "
                              "an ISO 8601 time with a zone", transient=False,
                              reason="malformed")
        if expiration <= datetime.datetime.now(datetime.UTC):
            # Fresh credentials cannot have expired: the device's clock is ahead, which
            # time synchronisation may yet cure.
            raise self._error(f"the credentials expire at {fields['expiration']}, before "
                              "now: is this device's clock right?", transient=True,
                              reason="malformed")
        return {"access_key": fields["accessKeyId"], "secret_key": fields["secretAccessKey"],
                "token": fields["sessionToken"], "expiry_time": expiration.isoformat()}

    def _status_error(self, status: int, detail: str) -> IotCredentialsError:
        if status == 403:
            return self._error(
                f"403 refused: {detail}: is the certificate active and attached to thing "
                f"{self.thing_name!r}, and does its IoT policy allow "
                f"iot:AssumeRoleWithCertificate on role alias {self.role_alias!r}?",
                transient=False, reason="refused")
        if status == 404:
            return self._error(f"404: role alias {self.role_alias!r} is unknown to the "
                               f"endpoint: {detail}", transient=False,
                               reason="unknown_role_alias")
        if status == 429:
            return self._error(f"429 throttled: {detail}", transient=True, reason="throttled")
        if status >= 500:
            return self._error(f"{status}: {detail}", transient=True, reason="server_error")
        if status == 400:
            return self._error(f"400: the role behind alias {self.role_alias!r} cannot be "
                               f"assumed: {detail}", transient=False, reason="role")
        return self._error(f"{status}: {detail}", transient=False, reason="http_error")

    def _error(self, message: str, *, transient: bool, reason: str) -> IotCredentialsError:
        self.counters.inc("iot_credentials_failures", reason=reason)
        suppressed = self._rate_limit.allow(reason)
        if suppressed is not None:
            log.warning("iot_credentials_failed", endpoint=self.host,
                        role_alias=self.role_alias, thing=self.thing_name, reason=reason,
                        transient=transient, error=message, suppressed=suppressed)
        return IotCredentialsError(f"IoT credentials provider {self.url} (thing "
                                   f"{self.thing_name!r}): {message}", transient=transient,
                                   reason=reason)

    # -- botocore and boto3 --------------------------------------------------------------

    def credentials(self) -> RefreshableCredentials:
        """botocore credentials fetched on first use, not now: a device must start
        without the network. Refreshed once less than ``refresh_before_s`` remain; a
        failed refresh before the last minute keeps the credentials held."""
        from botocore.credentials import DeferredRefreshableCredentials

        credentials = DeferredRefreshableCredentials(refresh_using=self.fetch, method=METHOD)
        # RefreshableCredentials' advisory/mandatory windows (its advisory_timeout and
        # mandatory_timeout arguments, which the deferred variant does not take).
        credentials._advisory_refresh_timeout = self.refresh_before_s
        credentials._mandatory_refresh_timeout = min(60.0, self.refresh_before_s)
        return credentials

    def session(self, region: str | None = None) -> boto3.session.Session:
        """A boto3 Session whose only credentials are this provider's (never the
        environment's or a shared file's). Checks the TLS files now, so a missing or
        unreadable one fails the start rather than every upload."""
        import boto3
        import botocore.credentials
        import botocore.session

        self.tls_context()
        provider = _Held(self.credentials())
        core = botocore.session.Session()
        core.register_component("credential_provider",
                                botocore.credentials.CredentialResolver([provider]))
        return boto3.session.Session(botocore_session=core, region_name=region)


def _excerpt(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace")
    return repr(text) + ("..." if len(body) > 200 else "")


class _Held:
    """A botocore credential provider (the resolver calls ``load()`` and reads
    ``METHOD``) that hands out credentials made beforehand."""

    METHOD = METHOD
    CANONICAL_NAME = "IotCredentialsProvider"

    def __init__(self, credentials: Any) -> None:
        self._credentials = credentials

    def load(self) -> Any:
        return self._credentials


def provider_from_spec(spec: IotCredentialsSpec, thing_default: str, *,
                       counters: Counters | None = None) -> IotCredentialsProvider:
    """The provider a ``credentials: {provider: iot, ...}`` section describes.
    ``thing_default``: the thing name when the section names none, i.e. the device's
    cloud thing name (``edged.cloud.link.thing_name``: cloud.thing_name, else device.id) for
    ``edged run``, the device name for ``edged agent``. Raises ConfigError when that
    default is no valid thing name."""
    host, port, alias = split_iot_endpoint(spec.endpoint)
    thing = spec.thing_name or thing_default
    if not re.fullmatch(THING_NAME_PATTERN, thing):
        raise ConfigError([f"credentials.thing_name: the default thing name {thing!r} (the "
                           "device's) is not a valid AWS IoT thing name (1-128 letters, "
                           "digits and :_-); set thing_name"])
    role_alias = spec.role_alias or alias
    assert role_alias is not None  # the spec requires one or the other
    return IotCredentialsProvider(host, role_alias, thing, spec.cert_file, spec.key_file,
                                  port=port, ca_file=spec.ca_file, timeout_s=spec.timeout_s,
                                  counters=counters)
