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
:func:`edged.base.durable.write_durably`), so one that exists is whole. Kept-longer and
other records never share a segment: the budget drops whole ``n`` segments, oldest first.
A segment's size is what it takes on disk (whole blocks), which is what fills a disk.

Whatever a start finds in the spool is read as untrusted: an intent or a record line
that does not parse is :class:`SpoolCorrupt`, counted and left out, never a crash.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import structlog

from edged.base import strict_json
from edged.base.durable import (
    disk_bytes,
    free_space,
    fsync_dir,
    makedirs_durably,
    read_at_most,
    write_durably,
)
from edged.base.errors import EdgedError
from edged.capture.spool import lock_spool

log = structlog.get_logger("edged.capture.segments")

#: The partition of a record without a model version (an agent capture for a model the
#: agent has no manifest for).
UNKNOWN_VERSION = "unknown"
_KEY_PARTS = ("device", "model", "version", "date", "hour")
#: An intent names at most max_records segments of a few dozen bytes each; anything
#: bigger was not written by an uplink.
MAX_INTENT_BYTES = 4 * 1024 * 1024


class SpoolCorrupt(EdgedError, ValueError):
    """A file or line in the spool that no uplink wrote (a torn disk, a stray edit)."""


@dataclass(frozen=True)
class Segment:
    seq: int
    anomalous: bool
    count: int
    size: int  # bytes on disk (whole blocks), what the spool's budget counts

    @property
    def name(self) -> str:
        return f"{self.seq:016d}-{'a' if self.anomalous else 'n'}-{self.count}.jsonl"

    @staticmethod
    def parse(name: str, size: int) -> Segment | None:
        try:
            seq, kind, count = name.removesuffix(".jsonl").split("-")
            if kind not in ("a", "n") or not name.endswith(".jsonl") or not (
                    seq.isdigit() and count.isdigit() and seq.isascii()
                    and count.isascii()):
                return None
            segment = Segment(int(seq), kind == "a", int(count), size)
        except ValueError:
            return None
        # Only the one spelling an uplink writes: the name is how a segment is found again.
        return segment if segment.name == name else None


@dataclass(frozen=True)
class Upload:
    """Segments chosen for one upload, written down before the first byte leaves: a
    restart uploads the same records under the same keys, overwriting, not duplicating."""

    batch_id: str
    segments: tuple[str, ...]


def parse_intent(body: bytes) -> Upload:
    """An intent file's upload; SpoolCorrupt unless it is one an uplink could have
    written (a UUID batch id, segment names of the spool's own form)."""
    try:
        data = strict_json.loads(body, max_bytes=MAX_INTENT_BYTES, max_depth=4)
    except strict_json.JsonError as exc:
        raise SpoolCorrupt(f"intent: {exc}") from None
    if not isinstance(data, dict) or set(data) != {"batch_id", "segments"}:
        raise SpoolCorrupt('intent: expected {"batch_id": ..., "segments": [...]}')
    batch_id, names = data["batch_id"], data["segments"]
    try:
        if not isinstance(batch_id, str) or str(uuid.UUID(batch_id)) != batch_id:
            raise ValueError
    except ValueError:
        raise SpoolCorrupt("intent: batch_id is not a UUID") from None
    if not isinstance(names, list) or not all(
            isinstance(n, str) and Segment.parse(n, 0) is not None for n in names):
        raise SpoolCorrupt("intent: segments must be a list of segment names")
    if len(set(names)) != len(names):
        raise SpoolCorrupt("intent: a segment is named twice")
    return Upload(batch_id, tuple(names))


def decode_line(line: bytes, device: str) -> tuple[dict, str]:
    """A spool line as its record and partition; SpoolCorrupt if it is not a record
    object with a partition (a ``time`` a date can be made of, a ``model_name``)."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise SpoolCorrupt("a line that is not JSON") from None
    if not isinstance(record, dict):
        raise SpoolCorrupt("a line that is not a JSON object")
    try:
        return record, partition(record, device)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise SpoolCorrupt(f"a record without a partition: {type(exc).__name__}") from None


def partition(record: dict, device: str) -> str:
    """``device=<id>/model=<name>/version=<v>/date=YYYY-MM-DD/hour=HH`` (UTC, from the
    record's wall-clock ``time``; a sketch's from the start of the hour it covers)."""
    when = datetime.fromtimestamp(
        record["period_start"] if record.get("kind") == "sketch" else record["time"], UTC)
    version = record.get("model_version")
    if not isinstance(record["model_name"], str):
        raise TypeError("model_name is not a string")
    return (f"device={device}/model={record['model_name']}/"
            f"version={UNKNOWN_VERSION if version is None else version}/"
            f"date={when:%Y-%m-%d}/hour={when:%H}")


def build_objects(batch_id: str, lines: Iterable[tuple[str, bytes]]
                  ) -> list[tuple[str, bytes]]:
    """One gzip JSON-lines object per partition, keyed ``<partition>/<uuid>.jsonl.gz``
    with the uuid derived from the batch id and the partition: a retry makes the same
    keys and the same bytes. ``lines``: each record's partition, with its line."""
    parts: dict[str, list[bytes]] = {}
    for where, line in lines:
        parts.setdefault(where, []).append(line)
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

    def open(self) -> tuple[list[Segment], list[Upload], int]:
        """Lock the spool; return the segments (oldest first), unfinished uploads and
        the number of intents that were not an uplink's (removed). Only creating the
        folders and the lock may fail: what a start would tidy up (strays, settled
        uploads) is left for the next start when the disk refuses it."""
        for directory in (self.root, self.segments_dir, self.uploads_dir):
            makedirs_durably(directory, self.fsync)
        self._lock_fd = lock_spool(self.root)
        for directory in (self.segments_dir, self.uploads_dir):
            for stray in directory.glob(".*.tmp"):
                self._tidy(stray.unlink, True)  # never renamed into place: never counted
        segments = self._scan()
        present = {s.name for s in segments}
        uploads, settled, corrupt = [], set(), 0
        for path in sorted(self.uploads_dir.glob("*.json")):
            try:
                upload = parse_intent(read_at_most(path, MAX_INTENT_BYTES))
            except SpoolCorrupt as exc:
                corrupt += 1
                log.error("capture_intent_corrupt", path=str(path), reason=str(exc))
                self._tidy(path.unlink, True)  # its segments go in a new upload
                continue
            except FileNotFoundError:
                continue
            if all(name in present for name in upload.segments):
                uploads.append(upload)
                continue
            # Segments leave an upload only once it is settled: the destination
            # acknowledged it, or it is being set aside. Replaying the rest would
            # overwrite its objects (same keys) with fewer records; finish instead.
            if (self.failed_dir / upload.batch_id).is_dir():
                self._tidy(self.fail_upload, upload, None)
            else:
                self._tidy(self.finish_upload, upload)
            settled.update(upload.segments)
        return [s for s in segments if s.name not in settled], uploads, corrupt

    def _scan(self) -> list[Segment]:
        segments = []
        for entry in os.scandir(self.segments_dir):
            with contextlib.suppress(FileNotFoundError):
                segment = Segment.parse(entry.name, disk_bytes(entry.stat()))
                if segment is not None:
                    segments.append(segment)
        segments.sort(key=lambda s: s.seq)
        return segments

    @staticmethod
    def _tidy(action: Callable[..., object], *args: object) -> None:
        """A clean-up a full or failing disk may refuse: logged, retried next start."""
        try:
            action(*args)
        except OSError as exc:
            log.warning("capture_spool_tidy_failed", action=action.__name__,
                        error=f"{errno.errorcode.get(exc.errno or 0, 'OSError')}: {exc}")

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_segment(self, seq: int, anomalous: bool, lines: list[bytes]) -> Segment:
        path = self.segments_dir / Segment(seq, anomalous, len(lines), 0).name
        write_durably(path, lines, self.fsync)
        return Segment(seq, anomalous, len(lines), disk_bytes(os.stat(path)))

    def space(self) -> tuple[int, int, int]:
        """(free bytes, allocation unit, size) of the spool's filesystem."""
        return free_space(self.segments_dir)

    def delete_segments(self, names: Iterable[str]) -> None:
        for name in names:
            (self.segments_dir / name).unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.segments_dir)

    def read_lines(self, names: Iterable[str]) -> list[bytes]:
        lines: list[bytes] = []
        for name in names:
            try:
                lines.extend((self.segments_dir / name).read_bytes().splitlines(keepends=True))
            except FileNotFoundError:
                pass
            except OSError as exc:
                # One unreadable file (a failing card) must not hold up every upload
                # behind it: its records are lost, the others go.
                log.error("capture_segment_unreadable", segment=name, error=str(exc))
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
