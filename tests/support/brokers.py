"""A mosquitto broker on a free loopback port, with a throwaway PKI for mutual TLS.

``Mosquitto`` runs Debian's mosquitto broker with a temporary config, installing it with
apt when it is missing and the process may (root, apt-get present)::

    with Mosquitto(tmp_path) as broker:
        ...  # broker.host, broker.port

``make_pki(directory)`` makes a throwaway CA (a :class:`TestPki`) that issues client
certificates; ``Mosquitto(tmp_path, pki=pki, acl=True)`` then also listens for mutual
TLS on ``tls_port``, as AWS IoT Core does (see ``Mosquitto``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tests.support.debian import program

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mosquitto_binary(install: bool = True) -> str:
    """The mosquitto executable; installs Debian's package if allowed and missing."""
    return program("mosquitto", ["mosquitto"], MOSQUITTO_PATHS, install)


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
