"""The on-disk spool: one file per pending capture, batch intents, the status log.

Everything here is blocking file I/O; the store calls it through ``asyncio.to_thread``.

Layout under ``spool_dir``::

    lock                        flock'ed while a store runs: one store per spool
    records/<seq>.cap           one pending capture (seq: 16 digits, submit order)
    records/<seq>.tmp           a capture being written; never acknowledged, removed on start
    batches/<seq>-<batch>.json  a batch being delivered: its id, model, hour and seqs
    status.jsonl                terminal statuses, one JSON object a line, last one wins
    corrupt/                    capture files that failed their checksum, kept for a human

A ``.cap`` file is ``MAGIC``, a 4-byte big-endian header length, the JSON header (ids,
timestamps, tensor metadata and byte sizes), the tensor and auxiliary bytes one after
the other, then a CRC-32 of everything before it. It is written under a temporary name,
fsync'ed, renamed into place and the directory fsync'ed, so a ``.cap`` that exists is
whole (the checksum catches what a disk without barriers might still tear).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edged.capture.records import AuxData, CaptureRecord, TensorData
from edged.durable import fsync_dir, write_durably
from edged.errors import EdgedError

MAGIC = b"EDGEDCAP1\n"
_LEN = struct.Struct(">I")


class CorruptRecord(EdgedError):
    """A spool file is truncated or fails its checksum."""


class SpoolLocked(EdgedError):
    """Another capture store holds this spool."""


@dataclass(frozen=True)
class Spooled:
    """A capture read back from the spool."""

    seq: int
    record: CaptureRecord
    received_at: float  # wall-clock time submit() was called


@dataclass(frozen=True)
class BatchIntent:
    """A batch chosen for delivery, written down before the first byte leaves, so that a
    restart delivers exactly the same batch (same id, same keys) instead of a second one."""

    batch_id: str
    model_name: str
    created: float  # wall-clock seconds; picks the YYYY/MM/DD/HH folder
    seqs: tuple[int, ...]

    @property
    def file_name(self) -> str:
        return f"{self.seqs[0]:016d}-{self.batch_id}.json"


def encode(record: CaptureRecord, received_at: float) -> list[bytes]:
    """The file's parts, without copying tensor bytes."""
    blobs: list[bytes] = []

    def tensors(items: list[TensorData]) -> list[dict]:
        blobs.extend(t.data for t in items)
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "size": len(t.data)}
                for t in items]

    def aux(items: list[AuxData]) -> list[dict]:
        blobs.extend(a.data for a in items)
        return [{"name": a.name, "encoding": a.encoding, "size": len(a.data)} for a in items]

    header = json.dumps({
        "model_name": record.model_name,
        "capture_id": record.capture_id,
        "inference_timestamp": list(record.inference_timestamp),
        "received_at": received_at,
        "input_tensors": tensors(record.input_tensors),
        "output_tensors": tensors(record.output_tensors),
        "inputs": aux(record.inputs),
        "outputs": aux(record.outputs),
    }, separators=(",", ":")).encode()
    parts = [MAGIC, _LEN.pack(len(header)), header, *blobs]
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts.append(_LEN.pack(crc))
    return parts


def decode(raw: bytes, seq: int) -> Spooled:
    try:
        if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 8:
            raise ValueError("not a capture file")
        (crc,) = _LEN.unpack_from(raw, len(raw) - 4)
        if zlib.crc32(memoryview(raw)[:-4]) != crc:
            raise ValueError("checksum mismatch")
        (size,) = _LEN.unpack_from(raw, len(MAGIC))
        start = len(MAGIC) + 4
        header = json.loads(raw[start:start + size])
        offset = start + size

        def take(n: int) -> bytes:
            nonlocal offset
            offset += n
            return raw[offset - n:offset]

        def tensors(items: list[dict]) -> list[TensorData]:
            return [TensorData(t["name"], t["dtype"], list(t["shape"]), take(t["size"]))
                    for t in items]

        def aux(items: list[dict]) -> list[AuxData]:
            return [AuxData(a["name"], a["encoding"], take(a["size"])) for a in items]

        record = CaptureRecord(
            model_name=header["model_name"],
            capture_id=header["capture_id"],
            inference_timestamp=tuple(header["inference_timestamp"]),
            input_tensors=tensors(header["input_tensors"]),
            output_tensors=tensors(header["output_tensors"]),
            inputs=aux(header["inputs"]),
            outputs=aux(header["outputs"]),
        )
        if offset != len(raw) - 4:
            raise ValueError("sizes do not add up")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise CorruptRecord(f"capture file {seq:016d}.cap: {exc}") from None
    return Spooled(seq, record, float(header["received_at"]))


def makedirs_durably(path: Path, fsync: bool) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        if fsync:
            fsync_dir(directory.parent)


def lock_spool(root: Path, holder: str = "another process") -> int:
    """Take ``root/lock`` (flock, released by the kernel if the process dies): one
    writer per spool. Returns the descriptor to close; SpoolLocked if it is taken."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"capture spool {root} is in use by {holder}") from None
    return fd


class Spool:
    """The spool directory. Methods block; call them from a thread."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.records = self.root / "records"
        self.batches = self.root / "batches"
        self.corrupt = self.root / "corrupt"
        self.fsync = fsync
        self._lock_fd: int | None = None
        self._records_fd: int | None = None

    # -- life cycle --------------------------------------------------------------------

    def open(self) -> None:
        for directory in (self.root, self.records, self.batches):
            makedirs_durably(directory, self.fsync)
        self._lock_fd = lock_spool(self.root, "another store")
        self._records_fd = os.open(self.records, os.O_RDONLY | os.O_DIRECTORY)
        # A .tmp was never acknowledged to a client: nothing was promised about it.
        for directory in (self.records, self.batches):
            for stray in directory.glob(".*.tmp"):
                stray.unlink(missing_ok=True)

    def close(self) -> None:
        for fd in (self._records_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)
        self._records_fd = self._lock_fd = None

    # -- records -----------------------------------------------------------------------

    def record_path(self, seq: int) -> Path:
        return self.records / f"{seq:016d}.cap"

    def write_record(self, seq: int, record: CaptureRecord, received_at: float) -> None:
        path = self.record_path(seq)
        tmp = self.records / f".{path.name}.tmp"
        with open(tmp, "wb") as f:
            f.writelines(encode(record, received_at))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync and self._records_fd is not None:
            os.fsync(self._records_fd)

    def record_seqs(self) -> list[int]:
        seqs = []
        for path in self.records.glob("*.cap"):
            with contextlib.suppress(ValueError):
                seqs.append(int(path.stem))
        return sorted(seqs)

    def read_record(self, seq: int) -> Spooled:
        return decode(self.record_path(seq).read_bytes(), seq)

    def quarantine(self, seq: int) -> Path:
        makedirs_durably(self.corrupt, self.fsync)
        target = self.corrupt / f"{seq:016d}.cap"
        os.replace(self.record_path(seq), target)
        return target

    def delete_records(self, seqs: list[int] | tuple[int, ...]) -> None:
        for seq in seqs:
            self.record_path(seq).unlink(missing_ok=True)
        if self.fsync and self._records_fd is not None:
            os.fsync(self._records_fd)

    # -- batch intents -----------------------------------------------------------------

    def write_intent(self, intent: BatchIntent) -> None:
        body = json.dumps({"batch_id": intent.batch_id, "model_name": intent.model_name,
                           "created": intent.created, "seqs": list(intent.seqs)})
        write_durably(self.batches / intent.file_name, [body.encode()], self.fsync)

    def intents(self) -> list[BatchIntent]:
        found = []
        for path in sorted(self.batches.glob("*.json")):
            try:
                data = json.loads(path.read_bytes())
                found.append(BatchIntent(data["batch_id"], data["model_name"],
                                         float(data["created"]), tuple(data["seqs"])))
            except (ValueError, KeyError, TypeError):
                # Written through a rename, so only a torn disk gets here; its records
                # are still in records/ and go out in a new batch.
                path.unlink(missing_ok=True)
        return found

    def delete_intent(self, intent: BatchIntent) -> None:
        (self.batches / intent.file_name).unlink(missing_ok=True)
        if self.fsync:
            fsync_dir(self.batches)


class StatusLog:
    """Terminal statuses (SUCCESS / FAILURE) of the last ``keep`` capture ids, kept in an
    append-only JSON-lines file that is rewritten when it grows past twice that."""

    def __init__(self, path: Path, keep: int, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.keep = keep
        self.fsync = fsync
        self._lines = 0
        self._torn_tail = False

    def load(self) -> OrderedDict[str, str]:
        statuses: OrderedDict[str, str] = OrderedDict()
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return statuses
        self._torn_tail = bool(text) and not text.endswith("\n")
        for line in text.splitlines():
            try:
                item = json.loads(line)
                capture_id, status = item["id"], item["status"]
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash mid-append
            statuses.pop(capture_id, None)
            statuses[capture_id] = status
            self._lines += 1
        while len(statuses) > self.keep:
            statuses.popitem(last=False)
        return statuses

    def append(self, items: list[tuple[str, str]], current: OrderedDict[str, str]) -> None:
        """Append ``items``; ``current`` (every status to keep, items included) is what a
        compaction writes."""
        if self._lines + len(items) > 2 * self.keep:
            lines = [json.dumps({"id": k, "status": v}) + "\n" for k, v in current.items()]
            write_durably(self.path, [("".join(lines)).encode()], self.fsync)
            self._lines = len(lines)
            return
        created = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            if self._torn_tail:
                f.write("\n")  # end the line a crash cut short instead of extending it
                self._torn_tail = False
            f.writelines(json.dumps({"id": k, "status": v}) + "\n" for k, v in items)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        if created and self.fsync:
            fsync_dir(self.path.parent)
        self._lines += len(items)
