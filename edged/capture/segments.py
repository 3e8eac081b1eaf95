"""The capture spool: JSON-lines segments on disk, upload intents, failed uploads; and
the object layout at the destination (keys, gzip JSON lines) with its one reader.

Blocking file I/O; :class:`edged.capture.uplink.CaptureUplink` calls it from a thread
and keeps the bookkeeping (which segments exist, which an upload claimed) on the loop.

Layout under a spool's root (``<state_dir>/capture/<pipeline>/``, or the agent's
``spool_dir``)::

    lock                                  flock'ed while a capture runs
    segments/<seq>-<kind>-<count>.jsonl   records, one JSON object a line; kind ``a``:
                                          every record kept longer (anomalous), ``n``:
                                          none is
    uploads/<batch_id>.json               an upload in flight: its segments, in order
    failed/<batch_id>/                    an upload the destination refused for good:
                                          its segments and ``error.txt``, for a human

A segment is written under a temporary name and renamed into place (through
:func:`edged.durable.write_durably`), so one that exists is whole. Kept-longer and
other records never share a segment: the budget drops whole ``n`` segments, oldest first.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edged.capture.spool import lock_spool
from edged.durable import fsync_dir, makedirs_durably, write_durably

#: The partition of a record without a model version (an agent capture for a model the
#: agent has no manifest for).
UNKNOWN_VERSION = "unknown"
_KEY_PARTS = ("device", "model", "version", "date", "hour")


@dataclass(frozen=True)
class Segment:
    seq: int
    anomalous: bool
    count: int
    size: int

    @property
    def name(self) -> str:
        return f"{self.seq:016d}-{'a' if self.anomalous else 'n'}-{self.count}.jsonl"

    @staticmethod
    def parse(name: str, size: int) -> Segment | None:
        try:
            seq, kind, count = name.removesuffix(".jsonl").split("-")
            if kind not in ("a", "n") or not name.endswith(".jsonl"):
                return None
            return Segment(int(seq), kind == "a", int(count), size)
        except ValueError:
            return None


@dataclass(frozen=True)
class Upload:
    """Segments chosen for one upload, written down before the first byte leaves: a
    restart uploads the same records under the same keys, overwriting, not duplicating."""

    batch_id: str
    segments: tuple[str, ...]


def partition(record: dict, device: str) -> str:
    """``device=<id>/model=<name>/version=<v>/date=YYYY-MM-DD/hour=HH`` (UTC, from the
    record's wall-clock ``time``)."""
    when = datetime.fromtimestamp(record["time"], UTC)
    version = record.get("model_version")
    return (f"device={device}/model={record['model_name']}/"
            f"version={UNKNOWN_VERSION if version is None else version}/"
            f"date={when:%Y-%m-%d}/hour={when:%H}")


def build_objects(batch_id: str, records: Iterable[tuple[dict, bytes]],
                  device: str) -> list[tuple[str, bytes]]:
    """One gzip JSON-lines object per partition, keyed ``<partition>/<uuid>.jsonl.gz``
    with the uuid derived from the batch id and the partition: a retry makes the same
    keys and the same bytes. ``records``: each record parsed, with its line."""
    parts: dict[str, list[bytes]] = {}
    for record, line in records:
        parts.setdefault(partition(record, device), []).append(line)
    base = uuid.UUID(batch_id)
    objects = []
    for prefix, chunk in sorted(parts.items()):
        name = uuid.uuid5(base, prefix)
        body = gzip.compress(b"".join(chunk), mtime=0)
        objects.append((f"{prefix}/{name}.jsonl.gz", body))
    return objects


def parse_key(key: str) -> dict[str, str]:
    """The partition of an object key (any prefix before ``device=``): ``device``,
    ``model``, ``version``, ``date``, ``hour``. ValueError for a key of another layout."""
    parts = key.split("/")
    if len(parts) < 6 or not parts[-1].endswith(".jsonl.gz"):
        raise ValueError(f"not a capture object key: {key!r}")
    found = {}
    for part, name in zip(parts[-6:-1], _KEY_PARTS, strict=True):
        field, sep, value = part.partition("=")
        if field != name or not sep:
            raise ValueError(f"not a capture object key: {key!r} (expected {name}=...)")
        found[name] = value
    return found


def read_object(key: str, body: bytes) -> list[dict]:
    """The records of one uploaded object, each with the partition its key names under
    ``"partition"``: the one reader of both record kinds (docs/capture.md)."""
    where = parse_key(key)
    records = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    for record in records:
        record["partition"] = where
    return records


class SegmentSpool:
    """One pipeline's spool directory. Methods block; call them from a thread."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.segments_dir = self.root / "segments"
        self.uploads_dir = self.root / "uploads"
        self.failed_dir = self.root / "failed"
        self.fsync = fsync
        self._lock_fd: int | None = None

    def open(self) -> tuple[list[Segment], list[Upload]]:
        """Lock the spool; return the segments (oldest first) and unfinished uploads."""
        for directory in (self.root, self.segments_dir, self.uploads_dir):
            makedirs_durably(directory, self.fsync)
        self._lock_fd = lock_spool(self.root)
        for directory in (self.segments_dir, self.uploads_dir):
            for stray in directory.glob(".*.tmp"):
                stray.unlink(missing_ok=True)  # never renamed into place: never counted
        segments = []
        for entry in os.scandir(self.segments_dir):
            segment = Segment.parse(entry.name, entry.stat().st_size)
            if segment is not None:
                segments.append(segment)
        segments.sort(key=lambda s: s.seq)
        present = {s.name for s in segments}
        uploads, settled = [], set()
        for path in sorted(self.uploads_dir.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                upload = Upload(data["batch_id"], tuple(data["segments"]))
            except (ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # torn: its segments go in a new upload
                continue
            if all(name in present for name in upload.segments):
                uploads.append(upload)
                continue
            # Segments leave an upload only once it is settled: the destination
            # acknowledged it, or it is being set aside. Replaying the rest would
            # overwrite its objects (same keys) with fewer records; finish instead.
            if (self.failed_dir / upload.batch_id).is_dir():
                self.fail_upload(upload, None)
            else:
                self.finish_upload(upload)
            settled.update(upload.segments)
        return [s for s in segments if s.name not in settled], uploads

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_segment(self, seq: int, anomalous: bool, lines: list[bytes]) -> Segment:
        segment = Segment(seq, anomalous, len(lines), sum(map(len, lines)))
        write_durably(self.segments_dir / segment.name, lines, self.fsync)
        return segment

    def delete_segments(self, names: Iterable[str]) -> None:
        for name in names:
            (self.segments_dir / name).unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.segments_dir)

    def read_lines(self, names: Iterable[str]) -> list[bytes]:
        lines: list[bytes] = []
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                lines.extend((self.segments_dir / name).read_bytes().splitlines(keepends=True))
        return lines

    def write_upload(self, upload: Upload) -> None:
        body = json.dumps({"batch_id": upload.batch_id, "segments": list(upload.segments)})
        write_durably(self.uploads_dir / f"{upload.batch_id}.json", [body.encode()],
                      self.fsync)

    def fail_upload(self, upload: Upload, reason: str | None) -> Path:
        """Set a refused upload's segments aside under ``failed/<batch_id>/`` with the
        reason (None: finishing a move a crash cut short), then drop its intent; return
        that folder."""
        target = self.failed_dir / upload.batch_id
        makedirs_durably(target, self.fsync)
        if reason is not None:
            write_durably(target / "error.txt", [reason.encode() + b"\n"], self.fsync)
        for name in upload.segments:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.segments_dir / name, target / name)
        if self.fsync:
            fsync_dir(self.segments_dir)
        (self.uploads_dir / f"{upload.batch_id}.json").unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.uploads_dir)
        return target

    def finish_upload(self, upload: Upload) -> None:
        """After the destination acknowledged: the records, then the intent."""
        self.delete_segments(upload.segments)
        (self.uploads_dir / f"{upload.batch_id}.json").unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.uploads_dir)
