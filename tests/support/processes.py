"""Child processes a test starts, kills and measures: ``edged run`` and friends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

RUN_EDGED = Path(__file__).with_name("run_edged.py")

class LoggedProcess:
    """A Python module run as a child process (``python -m MODULE ARGS``), its JSON log
    lines (stderr) collected as they come: for tests that start, kill and restart a real
    daemon or service::

        signer = LoggedProcess(["edged_cloud.upload_signer", "--host", ...])
        ...  # signer.events("upload_signer_ready"), signer.lines
        signer.kill()     # SIGKILL, as a power cut looks to the process
        signer.stop()     # SIGTERM, waits (SIGKILL after 20 s); returns the exit code

    ``script``: run that Python file instead (``python SCRIPT ARGS``).
    """

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, *, script: Path | None = None) -> None:
        self.name = script.name if script is not None else args[0]
        launch = [str(script)] if script is not None else ["-m"]
        self.proc = subprocess.Popen(
            [sys.executable, *launch, *args], cwd=cwd,
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
                raise AssertionError(f"no {event!r} from {self.name} "
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

        daemon = EdgedProcess(config, pause_jobs_at="staging")
        ...  # daemon.events("graph_started"), daemon.lines

    ``pause_jobs_at``: the jobs executor stops for good right after saving that phase
    (through ``run_edged.py``, which see).
    """

    def __init__(self, config: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, *, pause_jobs_at: str | None = None) -> None:
        args = ["run", "-c", str(config)]
        if pause_jobs_at is None:
            super().__init__(["edged", *args], env, cwd)
        else:
            super().__init__(["--pause-jobs-at", pause_jobs_at, *args], env, cwd,
                             script=RUN_EDGED)


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
