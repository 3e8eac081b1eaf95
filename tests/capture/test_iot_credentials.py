"""S3 uploads with the device certificate only: the AWS IoT Core credentials provider
(edged.capture.credentials), served here over real mutual TLS by a local HTTPS server that
speaks the provider's contract, in front of moto's S3 server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import json
import re
import socket
import ssl
import threading
import time
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from edged.base.errors import ConfigError
from edged.base.metrics import Counters
from edged.capture.credentials import (
    IotCredentialsError,
    IotCredentialsProvider,
    provider_from_spec,
)
from edged.capture.destinations import DeliveryError, S3Destination
from edged.config.capture import IotCredentialsSpec, PipelineCaptureSpec, split_iot_endpoint
from edged.testing import eventually
from tests.support import TestPki, free_port, make_pki
from tests.support.rounds import round_of

THING = "turbine-gw-01"
ALIAS = "edged-capture-uploads"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.provider._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # CredentialsServer.requests records what the tests need


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address) -> None:
        # The handshake runs in the connection's thread: a refused client must not stall
        # the accept loop, and its failure is recorded for the test.
        connection = self.tls.wrap_socket(  # type: ignore[attr-defined]
            request, server_side=True, do_handshake_on_connect=False)
        try:
            connection.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.provider.handshake_errors.append(exc)  # type: ignore[attr-defined]
            # Close as a TLS server does, letting the client read the alert sent rather
            # than resetting the connection on the request it sent meanwhile (TLS 1.3):
            # the plain socket's calls, under the failed TLS layer.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(connection, socket.SHUT_WR)
                connection.settimeout(5.0)
                while socket.socket.recv(connection, 65536):
                    pass
            connection.close()
            return
        self.RequestHandlerClass(connection, client_address, self)


class CredentialsServer:
    """The credentials provider's contract on 127.0.0.1: mutual TLS that requires a client
    certificate from ``pki``'s CA, ``GET /role-aliases/<alias>/credentials`` for the
    aliases in ``role_aliases`` (else 404), the ``x-amzn-iot-thingname`` header equal to
    the certificate's CN (else 403), and credentials valid ``lifetimes.pop(0)`` seconds
    (default an hour). ``replies`` (status, body) are answered first, in order, instead.
    ``requests`` records {path, thing, cn, status}; ``issued`` the credentials given."""

    def __init__(self, pki: TestPki, role_aliases: tuple[str, ...] = (ALIAS,)) -> None:
        self.role_aliases = set(role_aliases)
        self.lifetimes: list[float] = []
        self.replies: list[tuple[int, bytes]] = []
        self.requests: list[dict] = []
        self.issued: list[dict] = []
        self.handshake_errors: list[Exception] = []
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(pki.server_cert, pki.server_key)
        tls.load_verify_locations(pki.ca_file)
        tls.verify_mode = ssl.CERT_REQUIRED
        self._server = _TlsServer(("127.0.0.1", 0), _Handler)
        self._server.tls = tls  # type: ignore[attr-defined]
        self._server.provider = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._lock = threading.Lock()

    def _serve(self, request: _Handler) -> None:
        cert = request.connection.getpeercert()  # type: ignore[attr-defined]
        cn = dict(item[0] for item in cert["subject"])["commonName"]
        thing = request.headers.get("x-amzn-iot-thingname")
        found = re.fullmatch(r"/role-aliases/([^/]+)/credentials", request.path)
        with self._lock:
            if self.replies:
                status, body = self.replies.pop(0)
            elif not found or found[1] not in self.role_aliases:
                status, body = 404, b'{"message":"Role alias does not exist"}'
            elif thing != cn:
                status, body = 403, b'{"message":"Invalid thing name passed"}'
            else:
                status, body = 200, self._issue()
            self.requests.append({"path": request.path, "thing": thing, "cn": cn,
                                  "status": status})
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def _issue(self) -> bytes:
        lifetime = self.lifetimes.pop(0) if self.lifetimes else 3600.0
        expiration = (datetime.datetime.now(datetime.UTC)
                      + datetime.timedelta(seconds=lifetime)).replace(microsecond=0)
        n = len(self.issued) + 1
        credentials = {"accessKeyId": f"ASIATESTKEY{n:09d}",
                       "secretAccessKey": uuid.uuid4().hex,
                       "sessionToken": f"token-{n}-{uuid.uuid4().hex}",
                       "expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.issued.append(credentials)
        return json.dumps({"credentials": credentials}).encode()

    def __enter__(self) -> CredentialsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


class RecordingProvider(IotCredentialsProvider):
    """The real provider, whose boto3 sessions also record each S3 PutObject's signing
    key and session token (what S3 would check)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.signed: list[tuple[str, str]] = []

    def session(self, region=None):
        session = super().session(region)
        session.events.register("before-send.s3.PutObject", self._record)
        return session

    def _record(self, request, **kwargs) -> None:
        key = re.search(r"Credential=([^/]+)/", request.headers["Authorization"].decode())
        self.signed.append((key[1], request.headers["X-Amz-Security-Token"].decode()))


@pytest.fixture
def pki(tmp_path) -> TestPki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def server(pki):
    with CredentialsServer(pki) as server:
        yield server


def provider(pki: TestPki, server: CredentialsServer, *, cls=IotCredentialsProvider,
             role_alias: str = ALIAS, thing: str = THING, cert: tuple[Path, Path] | None = None,
             ca_file: Path | None = None, port: int | None = None, **kwargs):
    cert_file, key_file = cert or pki.client(THING)
    return cls("localhost", role_alias, thing, cert_file, key_file,
               port=port or server.port, ca_file=ca_file or pki.ca_file, timeout_s=5.0,
               **kwargs)


def destination(s3, bucket: str, credentials) -> S3Destination:
    return S3Destination(bucket, "captures", endpoint_url=s3.endpoint_url,
                         region="us-east-1", credentials=credentials)


# -- uploads -------------------------------------------------------------------------------


def test_uploads_with_the_providers_credentials_only(s3, pki, server):
    bucket = s3.create_bucket()
    counters = Counters()
    creds = provider(pki, server, cls=RecordingProvider, counters=counters)
    dest = destination(s3, bucket, creds)
    dest.open()
    # Opening needs no network: a device must start while the endpoint is unreachable.
    assert server.requests == []
    try:
        dest.write([("a/one.jsonl", b"one\n"), ("a/two.jsonl", b"two\n")])
    finally:
        dest.close()

    assert s3.objects(bucket, "captures/") == {"captures/a/one.jsonl": b"one\n",
                                               "captures/a/two.jsonl": b"two\n"}
    # One request for both objects, as the thing, for the role alias.
    assert server.requests == [{"path": f"/role-aliases/{ALIAS}/credentials", "thing": THING,
                                "cn": THING, "status": 200}]
    issued = server.issued[0]
    # Signed with the issued credentials, not the test keys in the environment (the s3
    # fixture sets AWS_ACCESS_KEY_ID=testing).
    assert creds.signed == [(issued["accessKeyId"], issued["sessionToken"])] * 2
    assert counters.get("iot_credentials_fetched") == 1


def test_credentials_are_refreshed_before_they_expire(s3, pki, server):
    bucket = s3.create_bucket()
    creds = provider(pki, server, cls=RecordingProvider, refresh_before_s=300.0)
    server.lifetimes = [240.0]  # inside the refresh window, still valid for minutes
    dest = destination(s3, bucket, creds)
    dest.open()
    try:
        dest.write([("one", b"1")])
        assert len(server.requests) == 1
        dest.write([("two", b"2")])  # the held credentials are near their end: refetched
        assert len(server.requests) == 2
        dest.write([("three", b"3")])  # the new ones last an hour
        assert len(server.requests) == 2
    finally:
        dest.close()
    first, second = ((c["accessKeyId"], c["sessionToken"]) for c in server.issued)
    assert creds.signed == [first, second, second]
    assert set(s3.objects(bucket, "captures/")) == {"captures/one", "captures/two",
                                                    "captures/three"}


def test_a_failed_early_refresh_keeps_the_held_credentials(s3, pki, server):
    bucket = s3.create_bucket()
    creds = provider(pki, server, cls=RecordingProvider, refresh_before_s=300.0)
    server.lifetimes = [240.0]
    dest = destination(s3, bucket, creds)
    dest.open()
    try:
        dest.write([("one", b"1")])
        server.replies = [(503, b'{"message":"Service Unavailable"}')]
        dest.write([("two", b"2")])  # the refresh fails; the credentials still hold
    finally:
        dest.close()
    assert [r["status"] for r in server.requests] == [200, 503]
    first = (server.issued[0]["accessKeyId"], server.issued[0]["sessionToken"])
    assert creds.signed == [first, first]
    assert set(s3.objects(bucket, "captures/")) == {"captures/one", "captures/two"}


@pytest.mark.parametrize(("fault", "transient"), [("unreachable", True),
                                                  ("unknown_role_alias", False)])
def test_an_upload_fails_with_the_credentials_error_and_its_class(s3, pki, server, fault,
                                                                  transient):
    bucket = s3.create_bucket()
    if fault == "unreachable":
        creds = provider(pki, server, port=free_port())
    else:
        creds = provider(pki, server, role_alias="no-such-alias")
    dest = destination(s3, bucket, creds)
    dest.open()
    try:
        with pytest.raises(DeliveryError) as info:
            dest.write([("one", b"1")])
    finally:
        dest.close()
    # The uploaders retry on the class: transient for as long as it takes.
    assert isinstance(info.value, IotCredentialsError)
    assert info.value.transient is transient
    assert info.value.reason == fault
    assert s3.objects(bucket) == {}


def test_missing_tls_files_fail_the_start(s3, pki, server, tmp_path):
    creds = provider(pki, server, cert=(tmp_path / "absent.pem", tmp_path / "absent.key"))
    dest = destination(s3, "some-bucket", creds)
    with pytest.raises(IotCredentialsError) as info:
        dest.open()
    assert not info.value.transient
    assert "absent.pem" in str(info.value) and info.value.reason == "files"


# -- the provider's answers ----------------------------------------------------------------


def test_fetch_returns_botocore_metadata(pki, server):
    metadata = provider(pki, server).fetch()
    issued = server.issued[0]
    assert metadata["access_key"] == issued["accessKeyId"]
    assert metadata["secret_key"] == issued["secretAccessKey"]
    assert metadata["token"] == issued["sessionToken"]
    assert datetime.datetime.fromisoformat(metadata["expiry_time"]) == \
        datetime.datetime.fromisoformat(issued["expiration"])


def test_a_certificate_from_another_ca_is_refused(pki, server, tmp_path):
    stranger = make_pki(tmp_path / "other").client(THING)
    counters = Counters()
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server, cert=stranger, counters=counters).fetch()
    assert not info.value.transient
    assert info.value.reason == "certificate_refused"
    assert "refused the certificate" in str(info.value)
    # Never got past TLS. The client may hear the refusal before the server's thread
    # has recorded its side of it: wait for that (bounded), do not race it.
    deadline = time.monotonic() + 10
    while not server.handshake_errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.requests == [] and server.handshake_errors
    assert counters.get("iot_credentials_failures", reason="certificate_refused") == 1


def test_an_endpoint_certificate_from_another_ca_is_not_trusted(pki, server, tmp_path):
    other = make_pki(tmp_path / "other")
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server, ca_file=other.ca_file).fetch()
    assert not info.value.transient
    assert info.value.reason == "tls" and "not trusted" in str(info.value)
    assert server.requests == []


def test_a_thing_name_the_certificate_is_not_attached_to_is_refused(pki, server):
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server, thing="another-thing").fetch()
    assert server.requests[0]["thing"] == "another-thing"
    assert not info.value.transient and info.value.reason == "refused"
    message = str(info.value)
    assert "403" in message and "Invalid thing name passed" in message
    assert "iot:AssumeRoleWithCertificate" in message


def test_an_unknown_role_alias(pki, server):
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server, role_alias="no-such-alias").fetch()
    assert server.requests[0]["path"] == "/role-aliases/no-such-alias/credentials"
    assert not info.value.transient and info.value.reason == "unknown_role_alias"
    assert "'no-such-alias'" in str(info.value) and "Role alias does not exist" in \
        str(info.value)


@pytest.mark.parametrize(("status", "reason", "transient"), [
    (400, "role", False), (429, "throttled", True), (500, "server_error", True),
    (503, "server_error", True), (401, "http_error", False)])
def test_error_statuses_are_classified(pki, server, status, reason, transient):
    server.replies = [(status, b'{"message":"Some reason"}')]
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server).fetch()
    assert (info.value.reason, info.value.transient) == (reason, transient)
    assert str(status) in str(info.value) and "Some reason" in str(info.value)


@pytest.mark.parametrize(("body", "says"), [
    (b"<html>Gateway</html>", "not JSON"),
    (b'{"Credentials": {}}', 'no "credentials" object'),
    (b'{"credentials": {"accessKeyId": "A", "secretAccessKey": "S", '
     b'"expiration": "2099-01-01T00:00:00Z"}}', "no sessionToken"),
    (b'{"credentials": {"accessKeyId": "A", "secretAccessKey": "S", "sessionToken": "T", '
     b'"expiration": "tomorrow"}}', "'tomorrow' is not an ISO 8601 time"),
    (b'{"credentials": {"accessKeyId": "A", "secretAccessKey": "S", "sessionToken": "T", '
     b'"expiration": "2099-01-01T00:00:00"}}', "with a zone"),
])
def test_a_malformed_reply_is_a_permanent_error(pki, server, body, says):
    server.replies = [(200, body)]
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server).fetch()
    assert not info.value.transient and info.value.reason == "malformed"
    assert "malformed reply" in str(info.value) and says in str(info.value)


def test_credentials_already_expired_point_at_the_clock(pki, server):
    server.lifetimes = [-60.0]
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server).fetch()
    assert info.value.transient and "clock" in str(info.value)


def test_an_unreachable_endpoint_is_transient(pki, server):
    counters = Counters()
    with pytest.raises(IotCredentialsError) as info:
        provider(pki, server, port=free_port(), counters=counters).fetch()
    assert info.value.transient and info.value.reason == "unreachable"
    assert "unreachable" in str(info.value) and "localhost" in str(info.value)
    assert counters.get("iot_credentials_failures", reason="unreachable") == 1


# -- configuration -------------------------------------------------------------------------


def spec(**changes) -> IotCredentialsSpec:
    values = {"provider": "iot", "endpoint": "c2x.credentials.iot.eu-west-1.amazonaws.com",
              "role_alias": ALIAS, "cert_file": "/etc/edged/thing.pem",
              "key_file": "/etc/edged/thing.key", **changes}
    return IotCredentialsSpec.model_validate(values)


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("c2x.credentials.iot.eu-west-1.amazonaws.com",
     ("c2x.credentials.iot.eu-west-1.amazonaws.com", 443, None)),
    ("https://c2x.credentials.iot.eu-west-1.amazonaws.com:8443",
     ("c2x.credentials.iot.eu-west-1.amazonaws.com", 8443, None)),
    (f"https://c2x.credentials.iot.eu-west-1.amazonaws.com/role-aliases/{ALIAS}/credentials",
     ("c2x.credentials.iot.eu-west-1.amazonaws.com", 443, ALIAS)),
])
def test_endpoint_forms(endpoint, expected):
    assert split_iot_endpoint(endpoint) == expected


def test_provider_from_spec_defaults_the_thing_name(pki):
    cert_file, key_file = pki.client(THING)
    made = provider_from_spec(spec(role_alias=None, cert_file=str(cert_file),
                                   key_file=str(key_file), endpoint=(
        f"https://c2x.credentials.iot.eu-west-1.amazonaws.com/role-aliases/{ALIAS}/"
        "credentials")), THING)
    assert made.thing_name == THING and made.role_alias == ALIAS
    assert made.url == ("https://c2x.credentials.iot.eu-west-1.amazonaws.com/role-aliases/"
                        f"{ALIAS}/credentials")
    assert provider_from_spec(spec(thing_name="named-thing"), THING).thing_name == \
        "named-thing"
    with pytest.raises(ConfigError, match="'gw.example.org'.*set thing_name"):
        provider_from_spec(spec(), "gw.example.org")


@pytest.mark.parametrize(("changes", "says"), [
    ({"role_alias": None}, "role_alias is required"),
    ({"endpoint": "http://c2x.example.com"}, "https (mutual TLS), not http"),
    ({"endpoint": "https://c2x.example.com/credentials"}, "/role-aliases/<role alias>"),
    ({"endpoint": "https://c2x.example.com/role-aliases/other/credentials"},
     "differs from the alias in endpoint"),
    ({"endpoint": "https://c2x.example.com:99999"}, "is not a host or URL"),
    ({"role_alias": "bad alias"}, "String should match pattern"),
    ({"thing_name": "gw.example.org"}, "String should match pattern"),
    ({"provider": "sts"}, "Input should be 'iot'"),
    ({"cert_file": None}, "cert_file"),
    ({"secret_key": "x"}, "Extra inputs are not permitted"),
])
def test_bad_credentials_specs_are_refused(changes, says):
    with pytest.raises(ValidationError) as info:
        spec(**changes)
    assert says in str(info.value)


def test_the_s3_destination_spec_takes_credentials():
    capture = PipelineCaptureSpec.model_validate({"destination": {
        "type": "s3", "bucket": "captures-bucket",
        "credentials": {"provider": "iot", "endpoint": "c2x.example.com",
                        "role_alias": ALIAS, "cert_file": "/c.pem", "key_file": "/k.pem"}}})
    assert capture.destination.credentials.role_alias == ALIAS
    plain = PipelineCaptureSpec.model_validate({"destination": {
        "type": "s3", "bucket": "captures-bucket"}})
    assert plain.destination.credentials is None


# -- the agent's config --------------------------------------------------------------------

ENDPOINT = "c2x.credentials.iot.eu-west-1.amazonaws.com"
OLD_AGENT = {
    "sagemaker_edge_core_device_name": THING,
    "sagemaker_edge_provider_aws_iot_cred_endpoint":
        f"https://{ENDPOINT}/role-aliases/{ALIAS}/credentials",
    "sagemaker_edge_provider_aws_cert_file": "iot/device.pem.crt",
    "sagemaker_edge_provider_aws_cert_pk_file": "/etc/edged/iot/private.pem.key",
    "sagemaker_edge_provider_aws_ca_cert_file": "iot/AmazonRootCA1.pem",
}


def agent_config(tmp_path: Path, data: dict | str, name: str = "agent.json"):
    from edged.agent.config import load_agent_config

    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return load_agent_config(path)


def agent_problems(tmp_path: Path, data: dict | str, name: str = "agent.json") -> list[str]:
    with pytest.raises(ConfigError) as info:
        agent_config(tmp_path, data, name)
    return info.value.problems


def test_the_old_agents_credential_keys_make_the_provider(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = agent_config(tmp_path, OLD_AGENT)
    creds = loaded.config.credentials
    assert creds is not None and creds.provider == "iot"
    # Relative paths are relative to the working directory, as the old agent's were
    # (docs/agent.md); the keys are used, not ignored.
    assert creds.cert_file == tmp_path / "iot/device.pem.crt"
    assert creds.key_file == Path("/etc/edged/iot/private.pem.key")
    assert creds.ca_file == tmp_path / "iot/AmazonRootCA1.pem"
    assert not {key for key, _ in loaded.ignored} & set(OLD_AGENT)
    made = provider_from_spec(creds, loaded.config.device_name)
    assert (made.host, made.port, made.role_alias, made.thing_name) == (
        ENDPOINT, 443, ALIAS, THING)


def test_an_endpoint_without_alias_takes_the_fleets(tmp_path):
    loaded = agent_config(tmp_path, {
        **OLD_AGENT, "sagemaker_edge_provider_aws_iot_cred_endpoint": ENDPOINT,
        "sagemaker_edge_core_device_fleet_name": "wind-farm"})
    # The alias SageMaker Edge Manager made with the fleet.
    assert loaded.config.credentials.role_alias == "SageMakerEdge-wind-farm"
    problems = agent_problems(tmp_path, {
        **OLD_AGENT, "sagemaker_edge_provider_aws_iot_cred_endpoint": ENDPOINT})
    assert len(problems) == 1
    assert problems[0].startswith("Invalid config for "
                                  "'sagemaker_edge_provider_aws_iot_cred_endpoint' at ")
    assert ", line 3: " in problems[0] and "/role-aliases/<role alias>/credentials" in \
        problems[0] and "sagemaker_edge_core_device_fleet_name" in problems[0]


def test_the_agents_credential_key_errors_name_the_key(tmp_path):
    no_key = {k: v for k, v in OLD_AGENT.items()
              if k != "sagemaker_edge_provider_aws_cert_pk_file"}
    assert agent_problems(tmp_path, no_key) == [
        f"Invalid config for 'sagemaker_edge_provider_aws_cert_pk_file' at "
        f"{tmp_path / 'agent.json'}: required key "
        "'sagemaker_edge_provider_aws_cert_pk_file' is missing"]
    plain = agent_problems(tmp_path, {
        **OLD_AGENT, "sagemaker_edge_provider_aws_iot_cred_endpoint": f"http://{ENDPOINT}"})
    assert len(plain) == 1
    assert "'sagemaker_edge_provider_aws_iot_cred_endpoint' at" in plain[0]
    assert "https (mutual TLS), not http" in plain[0]


def test_certificate_keys_without_an_endpoint_are_ignored(tmp_path):
    loaded = agent_config(tmp_path, {**OLD_AGENT,
                                     "sagemaker_edge_provider_aws_iot_cred_endpoint": ""})
    assert loaded.config.credentials is None
    ignored = dict(loaded.ignored)
    assert set(OLD_AGENT) - {"sagemaker_edge_core_device_name"} <= set(ignored)
    assert "standard AWS chain" in ignored["sagemaker_edge_provider_aws_cert_file"]


def test_the_agent_yaml_takes_a_credentials_section(tmp_path):
    text = f"""
device:
  id: {THING}
agent:
  credentials:
    provider: iot
    endpoint: {ENDPOINT}
    role_alias: {ALIAS}
    cert_file: iot/device.pem.crt
    key_file: iot/private.pem.key
"""
    creds = agent_config(tmp_path, text, "agent.yaml").config.credentials
    assert creds.role_alias == ALIAS and creds.key_file == tmp_path / "iot/private.pem.key"
    problems = agent_problems(tmp_path, text.replace("role_alias", "rolealias"), "agent.yaml")
    assert any("'agent.credentials.rolealias' at" in p and "line 8" in p
               and "unknown key" in p for p in problems)


def test_the_docs_samples_validate(tmp_path):
    import yaml

    page = (Path(__file__).resolve().parents[2] / "docs" / "credentials.md").read_text()
    pipeline, agent = re.findall(r"```yaml\n(.*?)```", page, re.DOTALL)
    capture = yaml.safe_load(pipeline)["pipelines"]["turbines"]["capture"]
    destination = PipelineCaptureSpec.model_validate(capture).destination
    assert destination.credentials.role_alias == "edged-capture-uploads"
    config = agent_config(tmp_path, agent, "agent.yaml").config
    assert config.credentials.role_alias is None  # taken from the endpoint's URL
    assert provider_from_spec(config.credentials, config.device_name).role_alias == \
        "edged-capture-uploads"


# -- wired into both capture users -----------------------------------------------------------


def credentials_spec(pki: TestPki, server: CredentialsServer) -> dict:
    cert_file, key_file = pki.client(THING)
    return {"provider": "iot", "endpoint": f"https://localhost:{server.port}",
            "role_alias": ALIAS, "cert_file": str(cert_file), "key_file": str(key_file),
            "ca_file": str(pki.ca_file)}


async def test_pipeline_capture_uploads_as_the_thing(tmp_path, s3, pki, server):
    from edged.capture.pipeline_capture import PipelineCapture
    from edged.plugin.events import Decision, ModelRef

    bucket = s3.create_bucket()
    spec = PipelineCaptureSpec.model_validate({
        "rate": {"every": 1},
        "destination": {"type": "s3", "bucket": bucket, "endpoint_url": s3.endpoint_url,
                        "region": "us-east-1", "credentials": credentials_spec(pki, server)},
        "upload": {"interval_s": 0.05}})
    counters = Counters()
    # No thing_name in the section: the capture asks as the device's cloud thing name.
    capture = PipelineCapture("p1", spec, device="dev-1", root=tmp_path / "spool",
                              counters=counters, thing=THING)
    async with capture:
        tasks = [asyncio.create_task(capture.write_loop()),
                 asyncio.create_task(capture.upload_loop())]
        capture.on_round(round_of([Decision("p1", "t1", 1_700_000_000.0, (0.1,), (False,),
                                            {}, ModelRef("wt", 3), rows=1)], ("f",), (1.0,)))
        await eventually(lambda: counters.get("capture_uploaded", pipeline="p1") == 1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    [key] = s3.objects(bucket, "captures/")
    assert key.startswith("captures/device=dev-1/model=wt/version=3/")
    assert [(r["thing"], r["status"]) for r in server.requests] == [(THING, 200)]


async def test_the_agents_cloud_captures_upload_as_the_device(tmp_path, s3, pki, server,
                                                              make_record):
    from edged.capture.store import CaptureSettings, CaptureStore

    bucket = s3.create_bucket()
    settings = CaptureSettings(destination="Cloud", disk_path=tmp_path / "capture",
                               s3_bucket=bucket, s3_endpoint_url=s3.endpoint_url,
                               s3_region="us-east-1", device_name=THING, batch_size=1)
    creds = provider_from_spec(IotCredentialsSpec.model_validate(credentials_spec(pki, server)),
                               THING)
    async with CaptureStore(settings, credentials=creds) as store:
        await store.submit(make_record(0))
        await eventually(lambda: store.status("cap-00000") == "SUCCESS")
    assert len(s3.objects(bucket, "")) == 1
    assert [(r["thing"], r["status"]) for r in server.requests] == [(THING, 200)]
