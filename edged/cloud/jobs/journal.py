"""The executor's memory of the job it is running, on disk, written before every step.

One file, ``<state_dir>/jobs/job.json``, replaced atomically (write, fsync, rename, fsync
the directory), so after kill -9 or power loss it holds the last phase that was entered,
never half of one. The executor saves a record *before* the side effect of each phase:
on restart it redoes at most one phase, and every phase can be redone (a download
resumes, extraction and install are idempotent, activation is checked against the
model store, a terminal report is sent again).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import structlog

from edged.base.durable import fsync_dir, makedirs_durably, write_durably

log = structlog.get_logger("edged.cloud.jobs")

#: The phases of one execution, in order. ``reporting`` holds a decided outcome that the
#: service has not acknowledged yet: it is kept until the service accepts it, and after a
#: restart it is reported before anything else, never decided again.
PHASES = ("received", "downloading", "verifying", "staging", "shadow", "activating",
          "reporting")


@dataclass
class JobRecord:
    job_id: str
    model: str
    version: int
    document: dict[str, Any]
    execution_number: int | None = None
    phase: str = "received"
    bytes: int = 0  # bundle bytes on disk at the last save
    url_at: float = 0.0  # Unix time the bundle URL in ``document`` was received
    slot: str | None = None  # the model store slot staged for this job
    started_at: float = field(default_factory=time.time)
    timers: dict[str, float] = field(default_factory=dict)  # seconds spent per phase
    shadow: dict[str, str] | None = None  # the shadow trial's figures, once run
    outcome: dict[str, Any] | None = None  # {"status": ..., "details": {...}} once decided
    resumed: int = 0  # restarts this execution has survived
    #: The code the service refused the outcome's report with for good (InvalidRequest,
    #: say): the execution is never run again, and the record is dropped once the
    #: service no longer lists it (its step timer ends it).
    refused: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        record = cls(**known)
        if record.phase not in PHASES:
            raise ValueError(f"unknown phase {record.phase!r}")
        return record


class Journal:
    """The record of the job in progress, if any, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "job.json"

    def load(self) -> JobRecord | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return JobRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            # Only a damaged disk gets here (the file is replaced atomically). Keep it for
            # a person to read, and start clean: the model store is consistent on its own.
            aside = self.path.with_name(f"job.json.damaged-{int(time.time())}")
            os.replace(self.path, aside)
            log.error("job_journal_damaged", path=str(aside), error=str(exc))
            return None

    def save(self, record: JobRecord) -> None:
        makedirs_durably(self.directory, fsync=True)
        text = json.dumps(asdict(record), indent=1, sort_keys=True)
        write_durably(self.path, [text.encode()], fsync=True)

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
            fsync_dir(self.directory)
