"""Helpers for testing edged and edged plugins against real parts (like ``tox.pytest``).

``Mosquitto`` runs Debian's mosquitto broker on a free loopback port with a temporary
config, installing it with apt when it is missing and the process may (root, apt-get
present). Plugin authors can use it as edged's own tests do::

    @pytest.fixture
    def broker(tmp_path):
        with Mosquitto(tmp_path) as broker:
            yield broker
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
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
