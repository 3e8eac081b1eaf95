"""A local AWS API server (moto's, in this process) and a mosquitto broker (Debian's, a
child process), for the fleet demo and the fleet-scale simulation.

The tests start theirs through tests/support; a command cannot import tests/, so this is
the command's own small launcher::

    with LocalAws() as aws, LocalBroker(workdir) as broker:
        aws.client("iot").create_thing(thingName="turbine-1")
        ...  # broker.host, broker.port

moto's server runs in this process on purpose: the local jobs service writes what devices
report into moto's in-process store (edged_cloud.local_jobs.service).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from edged_cloud.errors import CloudToolError

REGION = "us-east-1"
#: moto takes any credentials; boto3 wants some to sign with.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": REGION}
MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def mosquitto_binary() -> str:
    """mosquitto on PATH or where Debian puts it; a clear error saying how to get it."""
    found = shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise CloudToolError("mosquitto is not installed (not on PATH, not in /usr/sbin): "
                             "sudo apt-get install mosquitto")
    return found


class LocalBroker:
    """mosquitto on 127.0.0.1:``port``, anonymous, no persistence; its config and log in
    ``directory``. Each client is a connection: the broker inherits this process's open
    file limit, which ``raise_open_files`` lifts first."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.binary = mosquitto_binary()
        self.log_file = self.directory / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> LocalBroker:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "mosquitto.conf"
        config.write_text(f"listener {self.port} {self.host}\nallow_anonymous true\n"
                          "persistence false\nmax_queued_messages 100000\n"
                          "max_inflight_messages 0\nset_tcp_nodelay true\nlog_dest stderr\n")
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen([self.binary, "-c", str(config)],
                                            stdout=log, stderr=log)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.__exit__()
            raise CloudToolError(f"mosquitto did not start: "
                                 f"{self.log_file.read_text()[-500:]}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class LocalAws:
    """moto's standalone server (every service on one port: S3, IoT, IAM, STS) in this
    process, at ``endpoint_url``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def __enter__(self) -> LocalAws:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError:
            raise CloudToolError("moto's server is not installed: pip install "
                                 "'moto[server]' (the dev extras have it)") from None
        # werkzeug logs every request moto serves.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port,
                                          verbose=False)
        self._server.start()
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION,
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            config=Config(s3={"addressing_style": "path"},
                                          max_pool_connections=32))

    def environment(self) -> dict[str, str]:
        """What a process (an ``edged run`` daemon, a boto3 client made elsewhere) needs to
        reach this server."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint_url}


def raise_open_files(wanted: int) -> int:
    """Lift this process's soft limit on open files towards ``wanted`` (up to the hard
    limit); the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
