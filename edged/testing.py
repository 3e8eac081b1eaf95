"""Helpers for testing edged and edged plugins against real parts (like ``tox.pytest``).

``Mosquitto`` runs Debian's mosquitto broker on a free loopback port with a temporary
config, installing it with apt when it is missing and the process may (root, apt-get
present). Plugin authors can use it as edged's own tests do::

    @pytest.fixture
    def broker(tmp_path):
        with Mosquitto(tmp_path) as broker:
            yield broker

``make_pki(directory)`` makes a throwaway CA (a :class:`TestPki`) that issues client
certificates; ``Mosquitto(tmp_path, pki=pki, acl=True)`` then also listens for mutual
TLS on ``tls_port``, as AWS IoT Core does (see ``Mosquitto``).

``S3Server`` serves moto's S3-compatible API on a loopback port the test can take down
and bring back (see its docstring). ``BundleServer`` serves files over HTTP with Range and
the faults a download meets (cuts, stalls, 5xx, expired URLs, oversized bodies).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import unquote, urlsplit

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary(install: bool = True) -> str:
    """The mosquitto executable; installs Debian's package if allowed and missing."""
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "mosquitto"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        return mosquitto_binary(install=False)
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


# Characters of an AWS IoT thing name (and dots): a client's name is also its file name.
_CLIENT_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.-")


@dataclass(frozen=True)
class TestPki:
    """A throwaway certificate authority for mutual TLS, its files in ``directory``.

    Made by :func:`make_pki`. ``server_cert`` is valid for ``localhost`` and
    ``127.0.0.1``; ``client(name)`` issues a client certificate whose subject CN is
    ``name`` (the thing name, as AWS IoT binds a connection to its thing). A certificate
    from another CA, for a test that must be refused: ``make_pki(other_dir).client(name)``.
    """

    __test__ = False  # a helper, not a pytest test class

    directory: Path
    ca_file: Path  # the CA's certificate (PEM): the trust anchor of both sides
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of client ``name``: made on first use, then read from disk."""
        if not name or not set(name) <= _CLIENT_NAME_CHARS:
            raise ValueError(f"client name {name!r}: use letters, digits and ':_.-'")
        cert = self.directory / f"client-{name}.pem"
        key = self.directory / f"client-{name}.key"
        if not cert.exists():
            _issue(self, cert, key, name, server=False)
        return cert, key


def make_pki(directory: Path) -> TestPki:
    """A CA, a broker certificate and a directory to issue client certificates in.

    EC P-256 keys (files mode 0600), certificates valid from 5 minutes ago for one day.
    A directory that already holds a PKI made here is reused as it is.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pki = TestPki(directory=directory, ca_file=directory / "ca.pem",
                  ca_key=directory / "ca.key", server_cert=directory / "server.pem",
                  server_key=directory / "server.key")
    if not pki.ca_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                             f"edged test CA {uuid.uuid4().hex[:8]}")])
        cert = _certificate(name, key.public_key(), name, key, ca=True)
        _write_private(pki.ca_key, key)
        _write_atomic(pki.ca_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if not pki.server_cert.exists():
        _issue(pki, pki.server_cert, pki.server_key, "localhost", server=True)
    return pki


def _issue(pki: TestPki, cert_path: Path, key_path: Path, common_name: str, *,
           server: bool) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_file.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    cert = _certificate(subject, key.public_key(), ca_cert.subject, ca_key, ca=False,
                        server=server)
    # The key first: a certificate on disk means its key is there too.
    _write_private(key_path, key)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _certificate(subject, public_key, issuer, issuer_key, *, ca: bool, server: bool = False):
    """An X.509 v3 certificate with the extensions a strict verifier asks for."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None),
                       critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if not ca:
        usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else \
            x509.ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_private(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    _write_atomic(path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()), 0o600)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.chmod(partial, mode)  # despite the umask
    os.replace(partial, path)


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:``port``, started and stopped by pid.

    Anonymous clients may connect to ``port`` without TLS. With a ``pki`` (see
    :func:`make_pki`) it also listens on ``tls_port`` for mutual TLS as AWS IoT Core
    does: the broker presents ``pki.server_cert``, a client must present a certificate
    from ``pki``'s CA, and its CN becomes its user name. With ``acl=True`` as well, such
    a client may only use ``$aws/things/<its CN>/#``, while anonymous clients (the plain
    port: the test's own peers) may still use every topic. A client that sends a user
    name on the plain port is held to the same rule, with that name as its thing.
    """

    def __init__(self, directory: Path, port: int | None = None,
                 extra_config: str = "", pki: TestPki | None = None,
                 acl: bool = False) -> None:
        if acl and pki is None:
            raise ValueError("acl=True needs a pki: the ACL names clients by their CN")
        self.directory = Path(directory)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.pki = pki
        self.acl = acl
        self.tls_port: int | None = None
        if pki is not None:
            while (tls_port := free_port()) == self.port:
                pass
            self.tls_port = tls_port
        self.binary = mosquitto_binary()
        self.process: subprocess.Popen | None = None
        self.config_file = self.directory / f"mosquitto-{self.port}.conf"
        self.acl_file = self.directory / f"mosquitto-{self.port}.acl"
        self.log_file = self.directory / f"mosquitto-{self.port}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.config_file.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The benchmarks push tens of thousands of messages a second through it.
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "log_dest stderr\n"
            f"{self.extra_config}\n"
            f"{self._tls_config()}"
        )
        log = self.log_file.open("ab")
        self.process = subprocess.Popen([self.binary, "-c", str(self.config_file)],
                                        stdout=log, stderr=log)
        log.close()
        try:
            wait_for_port(self.port)
            if self.tls_port is not None:
                wait_for_port(self.tls_port)
        except TimeoutError:
            self.stop()
            tail = self.log_file.read_text()[-500:]
            raise RuntimeError(f"mosquitto did not start: {tail}") from None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tls_config(self) -> str:
        """The mutual-TLS listener's lines and the ACL's (global: per_listener_settings
        stays false, so allow_anonymous and acl_file hold on both listeners)."""
        pki = self.pki
        if pki is None:
            return ""
        lines = [
            # mosquitto started as root reads certificates after dropping to user
            # mosquitto, and neither pytest's tmp_path nor a 0600 key is readable then.
            "user root" if os.geteuid() == 0 else "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {pki.ca_file}",
            f"certfile {pki.server_cert}",
            f"keyfile {pki.server_key}",
            "require_certificate true",
            "use_identity_as_username true",
        ]
        if self.acl:
            # Lines before any "user" line are the anonymous clients': every topic ("#"
            # does not match topics that start with "$"). A pattern holds for every client
            # with a user name; %u is that name.
            self.acl_file.write_text(
                "topic readwrite #\n"
                "topic readwrite $aws/#\n"
                "topic read $SYS/#\n"
                "pattern readwrite $aws/things/%u/#\n")
            lines.append(f"acl_file {self.acl_file}")
        return "".join(f"{line}\n" for line in lines if line)


class S3Server:
    """moto's S3-compatible server, reached at ``endpoint_url`` on 127.0.0.1:``port``.

    moto serves on a private port in this process; ``port`` is a forwarder the test
    controls. ``stop()`` closes the listener and every open connection, so the endpoint
    is unreachable (connections refused) while buckets and objects stay, and ``start()``
    serves the same port again: an S3 endpoint that went away and came back, without
    boto3's pooled keep-alive connections slipping past the outage. moto keeps its state
    per process: use a fresh bucket per test (``create_bucket()`` names one)::

        with S3Server() as s3:
            bucket = s3.create_bucket()
            ...  # point boto3 at s3.endpoint_url with S3Server.CREDENTIALS
    """

    #: moto accepts any credentials; boto3 wants some to sign with.
    CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._moto = None
        self._backend_port = 0
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self):
        """A boto3 S3 client for this endpoint (path-style, test credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}))

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"edged-test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object under ``prefix``: key -> body."""
        client = self.client()
        found: dict[str, bytes] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = client.get_object(Bucket=bucket,
                                                       Key=item["Key"])["Body"].read()
        return found

    def start(self) -> None:
        if self._moto is None:
            from moto.server import ThreadedMotoServer

            # werkzeug logs every request moto serves; the tests' own output is enough.
            logging.getLogger("werkzeug").setLevel(logging.WARNING)

            self._backend_port = free_port()
            self._moto = ThreadedMotoServer(ip_address=self.host, port=self._backend_port,
                                            verbose=False)
            self._moto.start()
            wait_for_port(self._backend_port)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._stopping.clear()
        self._accepting = threading.Thread(target=self._accept, name=f"s3-forward-{self.port}",
                                           daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection((self.host, self._backend_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Take the endpoint down: refuse new connections, cut the open ones."""
        self._stopping.set()
        if self._accepting is not None:
            self._accepting.join()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            connections, self._connections = self._connections, set()
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the endpoint and moto's server."""
        self.stop()
        if self._moto is not None:
            self._moto.stop()
            # ThreadedMotoServer.stop() leaves its listening socket open.
            server = getattr(self._moto, "_server", None)
            if server is not None:
                server.server_close()
            self._moto = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BundleHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        with contextlib.suppress(ConnectionError):  # a client that hung up or was cut
            self.server.bundles._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: object) -> None:
        pass  # BundleServer.requests records what a test needs


class BundleServer:
    """Bundle files over HTTP/1.1 on 127.0.0.1, with the faults a download must survive::

        with BundleServer({"b.tar.gz": data}) as server:
            await fetch_bundle(server.url("b.tar.gz"), ...)

    ``files`` (name -> bytes) may change while it runs. Files are served by path, the
    query string ignored; ``valid(full_url)`` returning False answers 403 with S3's
    "Request has expired" body (``edged.jobs.peer.Presigner.valid`` fits). ``Range:
    bytes=N-`` is answered 206 with Content-Range, or 416 past the end; ``tls`` (a server
    ``ssl.SSLContext``) serves https. Faults, each an attribute a test sets:

    - ``cut_after=N``: headers, N body bytes, then the connection closes; for the next
      ``cut_times`` file responses (default 1), then off again;
    - ``stall_after=N``: N body bytes, then the connection hangs until ``close()``;
    - ``status_override=503``: that status, no body, for the next ``status_times`` requests;
    - ``ignore_range``: 200 and the whole file whatever the Range;
    - ``extra_bytes=N``: N junk bytes after the file, sent without Content-Length;
    - ``redirects``: path -> Location, answered 302.

    ``requests`` records ``{"path", "range", "status"}`` per request, in order.
    """

    EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
               b"<Message>Request has expired</Message></Error>")

    def __init__(self, files: dict[str, bytes] | None = None, *,
                 valid: Callable[[str], bool] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.files = dict(files or {})
        self.valid = valid
        self.cut_after: int | None = None
        self.cut_times = 1
        self.stall_after: int | None = None
        self.status_override: int | None = None
        self.status_times = 1
        self.ignore_range = False
        self.extra_bytes = 0
        self.redirects: dict[str, str] = {}
        self.requests: list[dict[str, object]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BundleHandler)
        self._server.daemon_threads = True
        self._server.bundles = self  # type: ignore[attr-defined]
        if tls is not None:  # https: a server-side context with a certificate loaded
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name=f"bundle-server-{self.port}")

    def url(self, name: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{name}"

    def _serve(self, request: _BundleHandler) -> None:
        path = urlsplit(request.path).path
        name = unquote(path.lstrip("/"))
        with self._lock:
            status = self.status_override
            if status is not None:
                self.status_times -= 1
                if self.status_times <= 0:
                    self.status_override, self.status_times = None, 1
        record = {"path": path, "range": request.headers.get("Range"), "status": status}
        if status is not None:
            self._send(request, record, status)
        elif path in self.redirects:
            self._send(request, record, 302, headers={"Location": self.redirects[path]})
        elif self.valid is not None and not self.valid(
                f"{self.scheme}://127.0.0.1:{self.port}{request.path}"):
            self._send(request, record, 403, self.EXPIRED)
        elif name not in self.files:
            self._send(request, record, 404)
        else:
            self._send_file(request, record, self.files[name])

    def _send_file(self, request: _BundleHandler, record: dict[str, object],
                   data: bytes) -> None:
        found = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("Range") or "")
        if not found or self.ignore_range:
            status, body, headers = 200, data, {}
        elif int(found[1]) >= len(data):
            self._send(request, record, 416, headers={"Content-Range": f"bytes */{len(data)}"})
            return
        else:
            first = int(found[1])
            last = min(int(found[2] or len(data) - 1), len(data) - 1)
            status, body = 206, data[first:last + 1]
            headers = {"Content-Range": f"bytes {first}-{last}/{len(data)}"}
        with self._lock:
            cut = self.cut_after
            if cut is not None:
                self.cut_times -= 1
                if self.cut_times <= 0:
                    self.cut_after, self.cut_times = None, 1
        stall = self.stall_after
        self._send(request, record, status, body + b"x" * self.extra_bytes, headers,
                   length=not self.extra_bytes, limit=cut if cut is not None else stall)
        if cut is None and stall is not None:
            self._closing.wait(60)
        if cut is not None or stall is not None:
            request.close_connection = True

    def _send(self, request: _BundleHandler, record: dict[str, object], status: int,
              body: bytes = b"", headers: dict[str, str] | None = None, *,
              length: bool = True, limit: int | None = None) -> None:
        record["status"] = status
        self.requests.append(record)
        request.send_response(status)
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        # Without a length the body ends when the connection closes.
        request.send_header(*("Content-Length", str(len(body))) if length else
                            ("Connection", "close"))
        request.end_headers()
        request.wfile.write(body if limit is None else body[:limit])
        request.wfile.flush()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> BundleServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def farm_config(device: str, state_dir: Path, *, turbines: int = 4, faults: str = "",
                model: str = "builtin:windturbine-v1", interval_s: float = 0.3,
                extra: str = "") -> str:
    """The YAML of the tests' usual device: a simulated farm (``faults`` as the
    simulator takes them) watched by the reference pipeline ``turbines`` with ``model``;
    ``extra``: more top-level sections (``cloud:``, ``metrics:``...), as YAML lines."""
    fault = f", faults: {faults!r}" if faults else ""
    return f"""\
device: {{id: {device}}}
state_dir: {state_dir}
log: {{level: info, stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: {turbines}, rate_hz: 20, seed: 3, history_s: 25{fault}}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "{model}"}}
    interval_s: {interval_s}
{extra}
"""


async def stop_task(task: asyncio.Task, seconds: float = 10.0) -> None:
    """Cancel ``task`` and wait until it has ended (re-cancelling: see
    :mod:`edged.runtime.tasks`); its exception, if it failed, is raised. Fails after
    ``seconds`` rather than hang a test."""
    from edged.runtime.tasks import cancel_and_wait

    await cancel_and_wait(task, seconds=seconds)
    if not task.cancelled():
        task.result()


class MqttPeer:
    """A test's own MQTT client beside the device (a recorder, a stand-in for an AWS
    service): subscribed to ``topics`` once entered, handing every message to
    :meth:`handle` until left."""

    def __init__(self, host: str, port: int, topics: list[str], identifier: str) -> None:
        self.host, self.port, self.topics, self.identifier = host, port, topics, identifier
        self.client: Any = None  # the aiomqtt.Client while entered: publish with it
        self._task: asyncio.Task | None = None

    async def handle(self, client: Any, topic: str, payload: bytes) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        subscribed = asyncio.Event()
        self._task = asyncio.create_task(self._serve(subscribed),
                                         name=f"test[{self.identifier}]")
        await asyncio.wait_for(subscribed.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await stop_task(self._task)

    async def _serve(self, subscribed: asyncio.Event) -> None:
        import aiomqtt

        async with aiomqtt.Client(self.host, self.port, identifier=self.identifier) as client:
            await client.subscribe([(topic, 1) for topic in self.topics])
            self.client = client
            subscribed.set()
            async for message in client.messages:
                await self.handle(client, str(message.topic), bytes(message.payload))


async def eventually(predicate: Callable[[], object], seconds: float = 20.0) -> None:
    """Wait until ``predicate()`` is true; TimeoutError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():  # noqa: ASYNC110  (a condition on any state, polled)
        if time.monotonic() > deadline:
            raise TimeoutError(f"still not true after {seconds} s")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_graph(config: Path, registry: Any = None) -> AsyncIterator[Any]:
    """A daemon graph built from ``config`` and running in this event loop (started,
    ready) for the block's duration; stopped, in stages, after it."""
    from edged.config import load_config
    from edged.plugin_manager import make_plugin_manager
    from edged.runtime.graph import build_graph

    if registry is None:
        _, registry = make_plugin_manager()
    graph = build_graph(load_config(config, registry), registry)
    ready = asyncio.Event()
    task = asyncio.create_task(graph.run(on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        yield graph
    finally:
        graph.stop()
        # Not wait_for: it waits without bound for a task that ignores its cancellation,
        # and a hung test says less than a failed one with every task's stack.
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:
            stacks = io.StringIO()
            for other in asyncio.all_tasks():
                other.print_stack(file=stacks)
            task.cancel()
            raise AssertionError(f"the graph did not stop within 30 s:\n{stacks.getvalue()}")
        task.result()


class LoggedProcess:
    """A Python module run as a child process (``python -m MODULE ARGS``), its JSON log
    lines (stderr) collected as they come: for tests that start, kill and restart a real
    daemon or service::

        signer = LoggedProcess(["edged_cloud.upload_signer", "--host", ...])
        ...  # signer.events("upload_signer_ready"), signer.lines
        signer.kill()     # SIGKILL, as a power cut looks to the process
        signer.stop()     # SIGTERM, waits (SIGKILL after 20 s); returns the exit code
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=cwd,
            env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(line))

    def events(self, name: str) -> list[dict]:
        return [line for line in self.lines if line.get("event") == name]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._reader.join(timeout=5)

    async def wait_for(self, event: str, seconds: float = 20.0) -> dict:
        """The first log line of ``event``, waiting up to ``seconds`` for it; fails with
        the process's last lines if it does not come (or the process ends first)."""
        deadline = time.monotonic() + seconds
        while not (found := self.events(event)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = "\n".join(json.dumps(line) for line in self.lines[-20:])
                raise AssertionError(f"no {event!r} from {self.proc.args[2]} "
                                     f"(exit code {self.proc.poll()}); its log:\n{tail}")
            await asyncio.sleep(0.05)
        return found[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop()


class EdgedProcess(LoggedProcess):
    """``edged run -c CONFIG`` as a child process::

        daemon = EdgedProcess(config, env={"EDGED_JOBS_PAUSE_AT": "staging"})
        ...  # daemon.events("graph_started"), daemon.lines
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        super().__init__(["edged", "run", "-c", str(config)], env, cwd)


def unit_directives(unit: Path, section: str = "Service") -> list[tuple[str, str]]:
    """A systemd unit file's KEY=value lines of one section, in order (keys may repeat):
    for tests that hold a shipped unit to its promises."""
    current, found = None, []
    for raw in Path(unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.append((key, value))
    return found


def unit_directive(unit: Path, key: str, section: str = "Service") -> str:
    """The one value of ``key``; fails if it is missing or repeated."""
    values = [v for k, v in unit_directives(unit, section) if k == key]
    if len(values) != 1:
        raise AssertionError(f"{unit}: [{section}] {key}= appears {len(values)} times")
    return values[0]


def hostile_configs(directory: Path, good: str) -> dict[str, tuple[Path, str]]:
    """Config files a careless operator or an attacker can leave where edged reads its
    config (issue 13, items 2 and 3), written into ``directory``: name -> (file, the
    reason edged refuses it under). ``good`` is a valid config's text, kept in the files
    where it makes them look like a config with something wrong in it."""
    bomb = ["lol: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"lol{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]" for n in range(1, 10)]
    texts: dict[str, tuple[bytes, str]] = {
        "not_utf8": (b"# caf\xe9 au lait\n" + good.encode(), "not_utf8"),
        "deep": (b"pad: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "too_deep"),
        "alias_bomb": ("\n".join(bomb).encode() + b"\n", "too_many_nodes"),
        "recursive_alias": (b"pad: &a [*a]\n" + good.encode(), "not_yaml"),
        "huge_int": (good.encode() + b"pad: " + b"9" * 5000 + b"\n", "not_yaml"),
        # Under the size bound, but a node every two bytes.
        "many_nodes": (b"pad: [" + b"0," * 500_000 + b"0]\n", "too_many_nodes"),
        # A valid config, then 50 MB of comments.
        "large": (good.encode() + (b"# " + b"x" * 77 + b"\n") * 655_360, "too_large"),
    }
    files = {}
    for name, (data, reason) in texts.items():
        path = directory / f"{name}.yaml"
        path.write_bytes(data)
        files[name] = (path, reason)
    return files


@dataclass
class Measured:
    """How a child process went: exit code (-9: killed at the time bound), wall time,
    peak resident memory and what it wrote on stderr."""

    returncode: int
    seconds: float
    peak_rss_mb: float
    stderr: str


# Runs ``python -m MODULE ARGS`` and, at exit, writes the process's own peak RSS (VmHWM,
# kB) to the file named first. Not wait4's ru_maxrss: Linux carries the parent's peak
# over fork and exec into it, so a child of a 1 GB test runner "peaks" at 1 GB.
_PEAK_WRAPPER = """\
import atexit, runpy, sys
def report(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:")).split()[1]
    with open(path, "w") as out:
        out.write(peak)
atexit.register(report)
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _peak_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration, ValueError):
        return 0


def run_measured(args: list[str], *, timeout: float, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> Measured:
    """``python -m ARGS``, killed after ``timeout`` s; its own peak RSS (VmHWM, reported
    at exit, or last seen while it ran if it was killed)."""
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as err, tempfile.NamedTemporaryFile("r") as peak:
        proc = subprocess.Popen([sys.executable, "-c", _PEAK_WRAPPER, peak.name, *args],
                                cwd=cwd, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        seen = 0
        while proc.poll() is None:
            seen = max(seen, _peak_kb(proc.pid))
            if time.monotonic() - started > timeout:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.02)
        seconds = time.monotonic() - started
        reported = peak.read().strip()
        err.seek(0)
        stderr = err.read()
    peak_kb = max(seen, int(reported) if reported.isdigit() else 0)
    return Measured(proc.returncode, seconds, peak_kb / 1024, stderr)
