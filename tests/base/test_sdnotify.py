"""The systemd notify protocol, against real Unix datagram sockets standing in for systemd.

The daemon tests run the real ``edged run`` in a subprocess with ``$NOTIFY_SOCKET`` and
``$WATCHDOG_USEC`` set, as systemd would, and check what it reports and when.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edged.app.assembly import build_graph
from edged.base import sdnotify
from edged.base.sdnotify import Notifier
from edged.config import load_config
from edged.plugin.manager import make_plugin_manager
from edged.runtime.supervisor import Supervisor
from tests.support import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL

CONFIG = """\
log:
  level: info
shutdown:
  stage_timeout_s: 2
sources:
  farm:
    type: simulator
    turbines: 3
    rate_hz: 20
    seed: 3
    history_s: 25
    faults: "1:vibration@0-60"
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine}
    inference: {type: onnx, model: "builtin:windturbine-v1"}
    interval_s: 0.5
actuators:
  operator-log:
    type: log
    inputs: [turbines]
    debounce: 2
"""


Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n") if line)


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET: a real AF_UNIX datagram socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.received: list[tuple[float, Message]] = []

    def close(self) -> None:
        self.sock.close()

    def messages(self, timeout: float) -> Iterator[Message]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return
            message = parse(data)
            self.received.append((time.monotonic(), message))
            yield message

    def expect(self, predicate: Callable[[Message], bool], timeout: float = 30,
               what: str = "") -> tuple[Message, list[Message]]:
        """The first message matching ``predicate`` and every message before it."""
        before = []
        for message in self.messages(timeout):
            if predicate(message):
                return message, before
            before.append(message)
        raise AssertionError(f"no {what or 'matching'} message within {timeout} s; "
                             f"got {before}")


def socket_path(tmp_path: Path) -> str:
    path = str(tmp_path / "notify")
    if len(path.encode()) > SUN_PATH_MAX:  # very long pytest base directories
        path = tempfile.mkdtemp(prefix="edged-") + "/notify"
    return path


@pytest.fixture
def systemd(tmp_path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(socket_path(tmp_path))
    yield fake
    fake.close()


def is_(key: str) -> Callable[[Message], bool]:
    return lambda message: message.get(key) == "1"


# -- the module -----------------------------------------------------------------------------


def test_notify_sends_one_datagram_of_fields(systemd):
    notifier = Notifier(systemd.path)
    assert notifier.enabled
    assert notifier.ready("running\nwell") is True
    message, _ = systemd.expect(is_("READY"), timeout=2)
    assert message == {"READY": "1", "STATUS": "running well"}
    assert notifier.notify("ERRNO=5", "STATUS=x") is True
    message, _ = systemd.expect(lambda m: "ERRNO" in m, timeout=2)
    assert message == {"ERRNO": "5", "STATUS": "x"}


def test_reloading_carries_the_monotonic_clock(systemd):
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(systemd.path).reloading("reloading x")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message, _ = systemd.expect(is_("RELOADING"), timeout=2)
    assert set(message) == {"RELOADING", "MONOTONIC_USEC", "STATUS"}
    assert before <= int(message["MONOTONIC_USEC"]) <= after


def test_stopping_watchdog_and_status(systemd):
    notifier = Notifier(systemd.path)
    assert notifier.stopping()
    assert notifier.watchdog()
    assert notifier.status("busy")
    got = [next(systemd.messages(2)) for _ in range(3)]
    assert got == [{"STOPPING": "1"}, {"WATCHDOG": "1"}, {"STATUS": "busy"}]


def test_abstract_socket():
    name = f"edged-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(2)
        assert Notifier("@" + name).ready() is True
        assert receiver.recv(4096) == b"READY=1"


def test_module_helpers_read_the_environment(systemd, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", systemd.path)
    assert sdnotify.ready("up")
    assert sdnotify.watchdog()
    assert [next(systemd.messages(2)) for _ in range(2)] == [
        {"READY": "1", "STATUS": "up"}, {"WATCHDOG": "1"}]


def test_no_notify_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    assert not Notifier.from_environ().enabled
    for call in (sdnotify.ready, sdnotify.reloading, sdnotify.stopping, sdnotify.watchdog):
        assert call() is False
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.status("x") is False
    assert sdnotify.watchdog_interval() is None


def test_a_missing_or_odd_socket_is_reported_not_raised(tmp_path):
    assert Notifier(str(tmp_path / "nobody-listens")).ready() is False
    assert Notifier("vsock:2:1234").ready() is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    ("200000", None, 0.2),
    ("30000000", "self", 30.0),
    ("30000000", "other", None),   # armed for another process
    ("30000000", "junk", None),
    (None, None, None),            # WatchdogSec= not set
    ("0", None, None),
    ("soon", None, None),
])
def test_watchdog_interval(usec, pid, expected):
    pid = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid)
    notifier = Notifier("/run/systemd/notify", watchdog_usec=usec, watchdog_pid=pid)
    assert notifier.watchdog_interval() == expected


def test_watchdog_needs_a_notify_socket():
    assert Notifier(None, watchdog_usec="1000000").watchdog_interval() is None


def test_watchdog_pid_mismatch_from_environ(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 1.0


# -- the supervisor, in process ------------------------------------------------------------


class RecordingNotifier(Notifier):
    """Records what would be sent, with the task that sent it."""

    def __init__(self, watchdog_usec: str | None = None) -> None:
        super().__init__("@recording", watchdog_usec=watchdog_usec)
        self.sent: list[tuple[str, Message]] = []
        self.changed = asyncio.Event()

    def notify(self, *fields: str) -> bool:
        task = asyncio.current_task()
        self.sent.append((task.get_name() if task else "", parse("\n".join(fields).encode())))
        self.changed.set()
        return True

    def states(self) -> list[str]:
        return [key for _, message in self.sent for key in message
                if key in ("READY", "RELOADING", "STOPPING")]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(30):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def test_supervisor_notifies_in_process(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    path = tmp_path / "edged.yaml"
    path.write_text(CONFIG)
    pm, registry = make_plugin_manager(blocked=[])
    notifier = RecordingNotifier(watchdog_usec="100000")
    stop, reload = asyncio.Event(), asyncio.Event()
    started: list = []
    supervisor = Supervisor(load_config(path, registry), registry, pm, stop=stop,
                            reload=reload, notifier=notifier, on_graph=started.append,
                            build=build_graph)
    run = asyncio.create_task(supervisor.run())
    await notifier.wait_for(lambda: "READY" in notifier.states())
    assert len(started) == 1 and started[0].running  # every stage's tasks exist
    watchdog = [t for t in asyncio.all_tasks() if t.get_name() == "edged[supervisor].watchdog"]
    assert len(watchdog) == 1
    await notifier.wait_for(lambda: sum("WATCHDOG" in m for _, m in notifier.sent) >= 3)
    assert {name for name, m in notifier.sent if "WATCHDOG" in m} == {
        "edged[supervisor].watchdog"}

    reload.set()
    await notifier.wait_for(lambda: notifier.states().count("READY") == 2)
    assert supervisor.reloads == 1
    path.write_text("sources: [\n")
    reload.set()
    await notifier.wait_for(lambda: notifier.states().count("READY") == 3)
    assert supervisor.reloads == 1
    assert "refused" in notifier.sent[-1][1]["STATUS"]

    stop.set()
    await asyncio.wait_for(run, 30)
    assert notifier.states() == ["READY", "RELOADING", "READY", "RELOADING", "READY",
                                 "STOPPING"]
    assert watchdog[0].cancelled()


async def test_no_watchdog_task_without_watchdog_usec(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    path = tmp_path / "edged.yaml"
    path.write_text(CONFIG)
    pm, registry = make_plugin_manager(blocked=[])
    notifier = RecordingNotifier()
    stop = asyncio.Event()
    supervisor = Supervisor(load_config(path, registry), registry, pm, stop=stop,
                            reload=asyncio.Event(), notifier=notifier, build=build_graph)
    run = asyncio.create_task(supervisor.run())
    await notifier.wait_for(lambda: "READY" in notifier.states())
    assert not [t for t in asyncio.all_tasks() if "watchdog" in t.get_name()]
    stop.set()
    await asyncio.wait_for(run, 30)
    assert notifier.states() == ["READY", "STOPPING"]


# -- the real daemon ------------------------------------------------------------------------


class Daemon:
    def __init__(self, tmp_path: Path, systemd: FakeSystemd, config: str = CONFIG) -> None:
        self.config = tmp_path / "edged.yaml"
        self.config.write_text(config)
        self.log_path = tmp_path / "edged.log"
        env = {k: v for k, v in os.environ.items()
               if k not in ("EDGED_BLOCK_PLUGINS", "WATCHDOG_PID")}
        env.update(NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="200000",
                   STATE_DIRECTORY=str(tmp_path / "state"))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edged", "--log-format", "json", "run", "-c",
                 str(self.config)], cwd=tmp_path, env=env, stdout=log, stderr=log)

    def events(self) -> list[str]:
        events = []
        for line in self.log_path.read_text().splitlines():
            try:
                events.append(json.loads(line)["event"])
            except (ValueError, KeyError):
                events.append(line)
        return events

    def exit_code(self, timeout: float = 30) -> int:
        """The daemon's exit status; a daemon still running after ``timeout`` fails the
        test with the end of its log, which says what it was stuck on."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            tail = "\n".join(self.log_path.read_text().splitlines()[-40:])
            raise AssertionError(f"edged still running after {timeout} s:\n{tail}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def daemon(tmp_path, systemd) -> Iterator[Daemon]:
    process = Daemon(tmp_path, systemd)
    yield process
    process.stop()


def test_daemon_lifecycle_under_a_fake_systemd(daemon, systemd):
    ready, before = systemd.expect(is_("READY"), timeout=60, what="READY=1")
    # READY=1 comes only once every component has started, never before.
    assert "graph_started" in daemon.events(), daemon.events()
    assert "STATUS" in ready and str(daemon.config) in ready["STATUS"]
    assert all(set(m) == {"WATCHDOG"} for m in before), before

    # Pings every WATCHDOG_USEC / 2 = 0.1 s, from the running daemon.
    pings = [m for m in systemd.messages(1.0) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 5, pings
    # The daemon decides: turbine 1's vibration fault is alarmed (debounce 2, 0.5 s).
    deadline = time.monotonic() + 20
    while "turbine_alarm" not in daemon.events() and time.monotonic() < deadline:
        list(systemd.messages(0.2))
    assert "turbine_alarm" in daemon.events(), daemon.events()

    # A good reload: RELOADING=1 with the monotonic clock, then READY=1.
    sent_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.proc.send_signal(signal.SIGHUP)
    reloading, _ = systemd.expect(is_("RELOADING"), what="RELOADING=1")
    assert int(reloading["MONOTONIC_USEC"]) >= sent_at
    ready, between = systemd.expect(is_("READY"), what="READY=1 after the reload")
    assert all(set(m) <= {"WATCHDOG", "STATUS"} for m in between), between
    assert "reloaded 1 time(s)" in ready["STATUS"]
    assert "config_reloaded" in daemon.events()

    # A broken config: refused, still RELOADING=1 then READY=1, and the daemon runs on.
    daemon.config.write_text("sources:\n  farm: {type: simulator, turbines: 0}\n")
    sent_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.proc.send_signal(signal.SIGHUP)
    reloading, _ = systemd.expect(is_("RELOADING"), what="RELOADING=1")
    assert int(reloading["MONOTONIC_USEC"]) >= sent_at
    ready, _ = systemd.expect(is_("READY"), what="READY=1 after the refusal")
    assert "refused" in ready["STATUS"]
    assert "reload_refused" in daemon.events()
    pings = [m for m in systemd.messages(0.6) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 3 and daemon.proc.poll() is None

    daemon.proc.send_signal(signal.SIGTERM)
    systemd.expect(is_("STOPPING"), what="STOPPING=1")
    assert daemon.exit_code() == 0
    states = [key for _, m in systemd.received for key in m
              if key in ("READY", "RELOADING", "STOPPING")]
    assert states == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]


def test_daemon_without_notify_socket_sends_nothing(tmp_path, systemd):
    """Outside systemd the helper is a no-op: the daemon runs and stops as ever."""
    path = tmp_path / "edged.yaml"
    path.write_text(CONFIG)
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGED_BLOCK_PLUGINS", "NOTIFY_SOCKET")}
    env.update(WATCHDOG_USEC="200000", STATE_DIRECTORY=str(tmp_path / "state"))
    log = tmp_path / "edged.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "--log-format", "json", "run",
                                 "-c", str(path)], cwd=tmp_path, env=env, stdout=out,
                                stderr=out)
    try:
        deadline = time.monotonic() + 60
        while "graph_started" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "graph_started" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert list(systemd.messages(0.2)) == []


def test_ready_waits_for_the_broker(tmp_path, systemd):
    """The shipped device config (configs/edged.yaml): the mqtt source connects when it
    starts, so READY=1 waits for the broker; until then systemd sees only watchdog pings."""
    broker = Mosquitto(tmp_path)
    text = (ROOT / "configs" / "edged.yaml").read_text()
    text, hosts = re.subn(r"host: localhost\n(\s+)port: 1883\n",
                          rf"host: 127.0.0.1\n\g<1>port: {broker.port}\n", text)
    text, retries = re.subn(r"(\s+)policy: retry(.*)\n", r"\g<0>\g<1>attempts: 200"
                            r"\g<1>backoff_s: 0.1\g<1>max_backoff_s: 0.2\n", text)
    assert (hosts, retries) == (2, 2), text
    daemon = Daemon(tmp_path, systemd, text)
    try:
        early = list(systemd.messages(3.0))
        assert early and all(set(m) == {"WATCHDOG"} for m in early), early
        assert "component_start_retry" in daemon.events(), daemon.events()
        assert "graph_started" not in daemon.events()
        broker.start()
        ready, _ = systemd.expect(is_("READY"), what="READY=1 once the broker is up")
        assert "graph_started" in daemon.events()
        assert str(daemon.config) in ready["STATUS"]
        daemon.proc.send_signal(signal.SIGTERM)
        systemd.expect(is_("STOPPING"))
        assert daemon.exit_code() == 0
    finally:
        daemon.stop()
        broker.stop()
