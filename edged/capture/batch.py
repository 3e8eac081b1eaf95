"""A batch as the objects that represent it at the destination: data files, then the
manifest, each under a key relative to ``folder_prefix``. Disk writes them as files, Cloud
uploads them as S3 objects; the keys are the same. See docs/capture.md."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime

from edged.capture.records import AuxData, TensorData
from edged.capture.spool import BatchIntent, Spooled

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_AUX_SUFFIX = {"CSV": ".csv", "JSON": ".json", "BASE64": ".b64", "NONE": ".bin"}


def hour_folder(intent: BatchIntent) -> str:
    """``<model>/<YYYY>/<MM>/<DD>/<HH>`` of the batch's creation time (UTC)."""
    when = datetime.fromtimestamp(intent.created, UTC)
    return f"{intent.model_name}/{when:%Y/%m/%d/%H}"


def manifest_key(intent: BatchIntent) -> str:
    return f"{hour_folder(intent)}/{intent.batch_id}.jsonl"


def _iso(seconds: int, nanos: int = 0) -> str:
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def _capture_folder(capture_id: str) -> str:
    """A file-name-safe folder for a capture's separate files: the id itself when it is
    safe (UUIDs are), otherwise a digest of it."""
    if _SAFE_ID.match(capture_id) and capture_id not in (".", ".."):
        return capture_id
    return "id-" + hashlib.sha256(capture_id.encode()).hexdigest()[:32]


def build_batch(intent: BatchIntent, spooled: list[Spooled], *, device_name: str,
                fleet_name: str | None, embed_limit: int) -> list[tuple[str, bytes]]:
    """``(relative key, bytes)`` of every object of the batch, the manifest last: a
    reader that finds the manifest finds everything it references."""
    folder = hour_folder(intent)
    objects: list[tuple[str, bytes]] = []
    lines: list[bytes] = []

    def place(data: bytes, relative: str, meta: dict) -> dict:
        meta["size"] = len(data)
        if len(data) <= embed_limit:
            meta["data"] = base64.b64encode(data).decode("ascii")
        else:
            meta["path"] = relative
            objects.append((f"{folder}/{relative}", data))
        return meta

    for item in spooled:
        record = item.record
        base = f"{intent.batch_id}/{_capture_folder(record.capture_id)}"

        def tensors(items: list[TensorData], kind: str, base: str = base) -> list[dict]:
            return [place(t.data, f"{base}/{kind}-{i}.bin",
                          {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)})
                    for i, t in enumerate(items)]

        def aux(items: list[AuxData], kind: str, base: str = base) -> list[dict]:
            return [place(a.data, f"{base}/{kind}-{i}{_AUX_SUFFIX.get(a.encoding, '.bin')}",
                          {"name": a.name, "encoding": a.encoding})
                    for i, a in enumerate(items)]

        seconds, nanos = record.inference_timestamp
        line = {
            "capture_id": record.capture_id,
            "model_name": record.model_name,
            "device_name": device_name,
            "fleet_name": fleet_name,
            "batch_id": intent.batch_id,
            "inference_timestamp": {"seconds": seconds, "nanos": nanos},
            "inference_time": _iso(seconds, nanos),
            "received_time": datetime.fromtimestamp(item.received_at, UTC)
            .isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "input_tensors": tensors(record.input_tensors, "input"),
            "output_tensors": tensors(record.output_tensors, "output"),
            "inputs": aux(record.inputs, "aux-input"),
            "outputs": aux(record.outputs, "aux-output"),
        }
        lines.append(json.dumps(line, separators=(",", ":")).encode() + b"\n")
    objects.append((manifest_key(intent), b"".join(lines)))
    return objects
