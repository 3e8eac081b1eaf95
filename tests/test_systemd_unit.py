"""systemd/edged.service and systemd/install.sh.

systemd itself does not run here, so the unit is checked three ways: `systemd-analyze
verify` and `security --offline` (Debian's systemd package), and the daemon run under
seccomp filters built from the unit's own SystemCallFilter=, MemoryDenyWriteExecute= and
RestrictAddressFamilies= the way systemd builds them (libseccomp), to show that numpy and
ONNX Runtime work inside that part of the sandbox.
"""

from __future__ import annotations

import ctypes.util
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edged.config import ShutdownSpec
from tests.support import unit_directive, unit_directives

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edged.service"
INSTALL = ROOT / "systemd" / "install.sh"
INSTALLED_EDGED = "/opt/edged/bin/edged"
MAX_EXPOSURE = 2.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")


def directives(section: str = "Service") -> list[tuple[str, str]]:
    return unit_directives(UNIT, section)


def directive(key: str, section: str = "Service") -> str:
    return unit_directive(UNIT, key, section)


def seconds(value: str) -> float:
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "ms": 0.001}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value).groups()
    return float(number) * units[unit]


# -- the unit's contract ----------------------------------------------------------------


def test_unit_runs_the_daemon_as_a_notify_service():
    assert directive("Type") == "notify"
    assert directive("NotifyAccess") == "main"
    assert directive("ExecStartPre") == f"{INSTALLED_EDGED} check-config /etc/edged/edged.yaml"
    assert directive("ExecStart") == f"{INSTALLED_EDGED} run -c /etc/edged/edged.yaml"
    assert directive("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert directive("Restart") == "on-failure"
    assert seconds(directive("RestartSec")) == 5
    assert seconds(directive("WatchdogSec")) == 30
    assert directive("KillMode") == "mixed"
    assert directive("User") == directive("Group") == "edged"
    assert directive("StateDirectory") == directive("ConfigurationDirectory") == "edged"
    assert directive("WantedBy", "Install") == "multi-user.target"


def test_stop_timeout_covers_the_staged_shutdown():
    # sources, pipelines, actuators, one drain per actuator, then the components' exits:
    # each stage bounded by shutdown.stage_timeout_s. The unit promises four actuators.
    stage = ShutdownSpec().stage_timeout_s
    assert seconds(directive("TimeoutStopSec")) >= (4 + 4) * stage


def test_unit_paths_match_the_installer():
    script = INSTALL.read_text()
    assert "PREFIX=/opt/edged" in script
    assert "CONF_DIR=/etc/edged" in script
    assert "UNIT_DIR=/etc/systemd/system" in script
    assert "SERVICE_USER=edged" in script
    assert directive("EnvironmentFile") == "-/etc/edged/edged.env"


# -- systemd-analyze ----------------------------------------------------------------------


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True,
                          timeout=120, check=False)


@needs_analyze
def test_verify_passes_with_the_binary_in_place(tmp_path):
    """The unit names /opt/edged/bin/edged, which exists only once installed: verify a
    copy pointing at this checkout's edged, and require no complaint at all (verify
    exits 0 even for unknown keys, so stderr is what tells)."""
    edged = Path(sys.executable).parent / "edged"
    if not edged.exists():
        pytest.skip(f"no edged console script at {edged}")
    copy = tmp_path / "edged.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_EDGED, str(edged)))
    result = _analyze("verify", str(copy))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


@needs_analyze
def test_verify_of_the_shipped_unit_complains_only_of_a_missing_install():
    result = _analyze("verify", str(UNIT))
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    if os.access(INSTALLED_EDGED, os.X_OK):
        assert result.returncode == 0 and problems == [], result.stderr
    else:
        assert problems, "verify should notice that edged is not installed"
        for line in problems:
            assert f"Command {INSTALLED_EDGED} is not executable" in line, line


@needs_analyze
def test_security_exposure_is_ok(tmp_path):
    result = _analyze("security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for edged\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    # The documented score is the real one.
    for doc in (ROOT / "systemd" / "README.md", ROOT / "README.md"):
        assert f"exposure level {match.group(1)}" in doc.read_text(), doc


# -- install.sh ---------------------------------------------------------------------------


def test_install_dry_run_prints_the_steps_and_changes_nothing(tmp_path):
    result = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True,
                            text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    expected = [
        "-m pip install --quiet --upgrade " + str(ROOT),
        "ln -sfn /opt/edged/bin/edged /usr/local/bin/edged",
        "/opt/edged/bin/edged check-config /etc/edged/edged.yaml",
        f"install -m 0644 {ROOT}/systemd/edged.service /etc/systemd/system/edged.service",
    ]
    for step in expected:
        assert step in out, (step, out)
    if not os.access("/opt/edged/bin/python", os.X_OK):
        assert "-m venv /opt/edged" in out
    if subprocess.run(["getent", "passwd", "edged"], capture_output=True,
                      check=False).returncode != 0:
        assert "useradd --system --user-group --no-create-home" in out
        assert "--shell /usr/sbin/nologin" in out
    if not Path("/etc/edged/edged.yaml").exists():
        assert f"{ROOT}/configs/edged.yaml /etc/edged/edged.yaml" in out
    else:
        assert "/etc/edged/edged.yaml exists: kept as it is" in out
    if Path("/run/systemd/system").is_dir():
        assert "systemctl enable --now edged" in out
    else:
        assert "systemctl daemon-reload && systemctl enable --now edged" in out
        assert "+ systemctl" not in out
    # Every step is printed, none is run: no line comes from a real command.
    assert all(line.startswith(("==> ", "+ ", "on the device", "user edged exists",
                                "/etc/edged/edged."))
               for line in out.splitlines()), out


def test_install_without_agent_leaves_the_agent_out(tmp_path):
    result = subprocess.run(["bash", str(INSTALL), "--dry-run"], capture_output=True,
                            text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "agent" not in result.stdout


def test_install_agent_dry_run_adds_the_agent_unit_and_its_config(tmp_path):
    result = subprocess.run(["bash", str(INSTALL), "--dry-run", "--agent"],
                            capture_output=True, text=True, timeout=60, check=False,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for step in [
        f"install -m 0644 {ROOT}/systemd/edged.service /etc/systemd/system/edged.service",
        f"install -D -m 0644 {ROOT}/docs/agent.md /opt/edged/share/doc/edged/agent.md",
        f"install -m 0644 {ROOT}/systemd/edged-agent.service "
        "/etc/systemd/system/edged-agent.service",
    ]:
        assert step in out, (step, out)
    if Path("/etc/edged/agent.json").exists():
        assert "/etc/edged/agent.json exists: kept as it is" in out
    else:
        assert (f"install -m 0640 -o root -g edged {ROOT}/configs/agent.json "
                "/etc/edged/agent.json") in out
    if Path("/run/systemd/system").is_dir():
        assert "systemctl enable --now edged edged-agent" in out
    else:
        assert "systemctl daemon-reload && systemctl enable --now edged edged-agent" in out
    # The agent's steps come after the daemon's, each printed, none run.
    assert out.index("edged.service") < out.index("edged-agent.service")
    assert all(line.startswith(("==> ", "+ ", "on the device", "user edged exists",
                                "/etc/edged/edged.", "/etc/edged/agent."))
               for line in out.splitlines()), out


def test_the_installed_agent_config_is_what_the_agent_unit_reads():
    from edged.agent.config import load_agent_config

    agent_unit = ROOT / "systemd" / "edged-agent.service"
    assert "-c /etc/edged/agent.json" in unit_directive(agent_unit, "ExecStart")
    loaded = load_agent_config(ROOT / "configs" / "agent.json")
    state = Path("/var/lib") / unit_directive(agent_unit, "StateDirectory")
    assert loaded.format == "json" and loaded.ignored == []
    assert loaded.config.model_roots == [state / "models"]
    assert loaded.config.capture_settings().disk_path == state / "capture"


def test_install_needs_root_or_dry_run():
    command = ["bash", str(INSTALL)]
    if os.geteuid() == 0:  # as root a real install would run: drop to nobody first
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop privileges")
        command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                   *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 77, result.stderr
    assert "run as root" in result.stderr


def test_install_rejects_unknown_options():
    result = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 64
    assert "unknown option --frobnicate" in result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_is_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout


# -- the daemon inside the unit's seccomp filters -------------------------------------------

# Execs a command under the filters systemd would install for the unit (seccomp-util.c):
# the address-family and write+execute filters first, the system-call allow list last
# (it refuses the calls that load filters). Blocked calls fail with the errno systemd uses.
LAUNCHER = r'''
import ctypes, ctypes.util, errno, json, os, sys

lib = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                       ctypes.c_uint, ctypes.c_void_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_release.argtypes = [ctypes.c_void_p]


class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]


ALLOW, EQ, GT, MASKED_EQ = 0x7FFF0000, 4, 6, 7


def errno_action(code):
    return 0x00050000 | code


def rule(ctx, action, name, *cmps):
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        return  # not a system call of this architecture
    array = (Cmp * max(len(cmps), 1))(*cmps)
    rc = lib.seccomp_rule_add_array(ctx, action, number, len(cmps), array)
    if rc < 0:
        raise OSError(-rc, "seccomp_rule_add " + name)


def load(ctx):
    rc = lib.seccomp_load(ctx)
    lib.seccomp_release(ctx)
    if rc < 0:
        raise OSError(-rc, "seccomp_load")


spec = json.loads(sys.argv[1])
if spec["families"]:
    ctx = lib.seccomp_init(ALLOW)
    top = max(spec["families"])
    rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", Cmp(0, GT, top, 0))
    for family in range(top):
        if family not in spec["families"]:
            rule(ctx, errno_action(errno.EAFNOSUPPORT), "socket", Cmp(0, EQ, family, 0))
    load(ctx)
if spec["mdwe"]:
    PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
    ctx = lib.seccomp_init(ALLOW)
    rule(ctx, errno_action(errno.EPERM), "mmap",
         Cmp(2, MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    for name in ("mprotect", "pkey_mprotect"):
        rule(ctx, errno_action(errno.EPERM), name, Cmp(2, MASKED_EQ, PROT_EXEC, PROT_EXEC))
    rule(ctx, errno_action(errno.EPERM), "shmat", Cmp(2, MASKED_EQ, SHM_EXEC, SHM_EXEC))
    load(ctx)
ctx = lib.seccomp_init(errno_action(spec["errno"]))
for name in spec["allow"]:
    rule(ctx, ALLOW, name)
load(ctx)
os.execv(sys.argv[2], sys.argv[2:])
'''

PROBE = r'''
import mmap, os, socket
for what, call in [
    ("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    ("wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)),
    ("chroot", lambda: os.chroot("/")),
]:
    try:
        call()
        print(what, "allowed")
    except OSError as exc:
        print(what, exc.errno)
socket.socket(socket.AF_INET, socket.SOCK_STREAM).close()
print("inet ok")
'''

LIBSECCOMP = ctypes.util.find_library("seccomp")
needs_seccomp = pytest.mark.skipif(
    LIBSECCOMP is None or SYSTEMD_ANALYZE is None or not sys.platform.startswith("linux"),
    reason="needs Linux, libseccomp and systemd-analyze (Debian's systemd package)")


def syscall_groups() -> dict[str, list[str]]:
    out = _analyze("syscall-filter").stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif not line.strip():
            current = None
        elif current and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def unit_seccomp_spec(unit: Path = UNIT) -> dict:
    """The seccomp filter systemd would build from ``unit``'s own lines (the agent's unit
    tests use it too)."""
    groups = syscall_groups()

    def directive(key: str) -> str:
        return unit_directive(unit, key)

    def expand(item: str) -> set[str]:
        if item.startswith("@"):
            return set().union(*(expand(member) for member in groups[item]))
        return {item}

    allow: set[str] = set()
    for value in (v for k, v in unit_directives(unit) if k == "SystemCallFilter"):
        if value.startswith("~"):
            for item in value[1:].split():
                allow -= expand(item)
        else:
            for item in value.split():
                allow |= expand(item)
    names = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET,
             "AF_INET6": socket.AF_INET6}
    errno_name = directive("SystemCallErrorNumber")
    return {
        "allow": sorted(allow),
        "errno": getattr(errno, errno_name),
        "mdwe": directive("MemoryDenyWriteExecute") == "yes",
        "families": [int(names[f]) for f in directive("RestrictAddressFamilies").split()],
    }


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("seccomp") / "launch.py"
    path.write_text(LAUNCHER)
    return [sys.executable, str(path), json.dumps(unit_seccomp_spec())]


@needs_seccomp
def test_the_emulated_filters_bite(launcher):
    result = subprocess.run([*launcher, sys.executable, "-c", PROBE], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"netlink {errno.EAFNOSUPPORT}", f"wx {errno.EPERM}", f"chroot {errno.EPERM}",
        "inet ok"]


@needs_seccomp
def test_daemon_runs_inside_the_units_seccomp_filters(launcher, tmp_path):
    """numpy, ONNX Runtime and the supervisor under SystemCallFilter=@system-service
    ~@privileged @resources, MemoryDenyWriteExecute=yes and the unit's address families:
    READY=1, decisions, a reload and a clean stop."""
    from tests.base.test_sdnotify import CONFIG, FakeSystemd, is_, socket_path

    config = tmp_path / "edged.yaml"
    config.write_text(CONFIG)
    systemd = FakeSystemd(socket_path(tmp_path))
    log = tmp_path / "edged.log"
    env = {k: v for k, v in os.environ.items() if k != "EDGED_BLOCK_PLUGINS"}
    env.update(NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="1000000",
               STATE_DIRECTORY=str(tmp_path / "state"))
    with log.open("wb") as out:
        proc = subprocess.Popen([*launcher, sys.executable, "-m", "edged", "--log-format",
                                 "json", "run", "-c", str(config)], cwd=ROOT, env=env,
                                stdout=out, stderr=out)
    try:
        systemd.expect(is_("READY"), timeout=60, what="READY=1 inside the filters")
        deadline = time.monotonic() + 20
        while '"turbine_alarm"' not in log.read_text() and time.monotonic() < deadline:
            list(systemd.messages(0.2))
        assert '"turbine_alarm"' in log.read_text(), log.read_text()
        proc.send_signal(signal.SIGHUP)
        systemd.expect(is_("RELOADING"))
        systemd.expect(is_("READY"))
        proc.send_signal(signal.SIGTERM)
        systemd.expect(is_("STOPPING"))
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        systemd.close()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert '"config_reloaded"' in text
