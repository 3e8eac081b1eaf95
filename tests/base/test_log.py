"""Logs under journald carry their syslog priority, so `journalctl -p warning` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edged.base.log import stream_is_journal

ROOT = Path(__file__).resolve().parents[2]
# A program that logs one line per level through the daemon's own set-up.
PROGRAM = """\
import structlog
from edged.base.log import configure_logging
configure_logging("debug", "{fmt}")
log = structlog.get_logger("probe")
log.debug("quiet", n=1)
log.info("said", n=2)
log.warning("warned", n=3)
log.error("failed", n=4)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("crashed", n=5)
"""


def run_logging(tmp_path: Path, journal: str | None, fmt: str = "json") -> list[str]:
    """The probe's stderr lines, written to a file; ``journal``: what $JOURNAL_STREAM
    says ("self": the file's own device:inode, as systemd would set it)."""
    log_file = tmp_path / "stderr.log"
    log_file.touch()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal == "self":
        stat = log_file.stat()
        env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
    elif journal is not None:
        env["JOURNAL_STREAM"] = journal
    with log_file.open("w") as stderr:
        subprocess.run([sys.executable, "-c", PROGRAM.format(fmt=fmt)], cwd=ROOT, env=env,
                       stderr=stderr, check=True, timeout=60)
    return log_file.read_text().splitlines()


def test_lines_to_the_journal_start_with_their_priority(tmp_path):
    lines = run_logging(tmp_path, "self")
    prefixes = [line[:3] for line in lines if line.startswith("<")]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>"], lines
    # After the prefix, the line is the JSON it always was (journald strips the prefix).
    records = [json.loads(line[3:]) for line in lines if line.startswith("<")]
    assert [(r["event"], r["level"]) for r in records] == [
        ("quiet", "debug"), ("said", "info"), ("warned", "warning"), ("failed", "error"),
        ("crashed", "error")]
    assert "ZeroDivisionError" in records[-1]["exception"]


def test_the_console_format_is_prefixed_too(tmp_path):
    lines = run_logging(tmp_path, "self", fmt="console")
    warned = [line for line in lines if "warned" in line]
    assert len(warned) == 1 and warned[0].startswith("<4>"), lines


@pytest.mark.parametrize("journal", [None, "", "1:2", "nonsense", "12", "a:b"])
def test_no_prefix_unless_stderr_is_that_journal_stream(tmp_path, journal):
    # An inherited JOURNAL_STREAM names the parent's stream, not a stderr redirected to a
    # file: those lines stay plain JSON.
    lines = run_logging(tmp_path, journal)
    assert [json.loads(line)["event"] for line in lines if line.startswith("{")] == [
        "quiet", "said", "warned", "failed", "crashed"], lines


def test_stream_is_journal_compares_device_and_inode(tmp_path):
    path = tmp_path / "f"
    with path.open("w") as stream:
        stat = os.fstat(stream.fileno())
        assert stream_is_journal(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": f"{stat.st_dev}:"
                                                                f"{stat.st_ino + 1}"})
        assert not stream_is_journal(stream, {})
