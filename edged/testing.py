"""Helpers for testing edged and edged plugins against real parts (like ``tox.pytest``).

``Mosquitto`` runs Debian's mosquitto broker on a free loopback port with a temporary
config, installing it with apt when it is missing and the process may (root, apt-get
present). Plugin authors can use it as edged's own tests do::

    @pytest.fixture
    def broker(tmp_path):
        with Mosquitto(tmp_path) as broker:
            yield broker

``S3Server`` serves moto's S3-compatible API on a loopback port the test can take down
and bring back (see its docstring).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

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


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:``port``, started and stopped by pid."""

    def __init__(self, directory: Path, port: int | None = None,
                 extra_config: str = "") -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.extra_config = extra_config
        self.binary = mosquitto_binary()
        self.process: subprocess.Popen | None = None
        self.config_file = self.directory / f"mosquitto-{self.port}.conf"
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
        )
        log = self.log_file.open("ab")
        self.process = subprocess.Popen([self.binary, "-c", str(self.config_file)],
                                        stdout=log, stderr=log)
        log.close()
        try:
            wait_for_port(self.port)
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
